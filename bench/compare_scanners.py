"""weightkit.scan against picklescan, modelscan and fickling on the same files.

The malicious corpus (tests/_malicious.py, both red-team rounds) and benign files written by
torch, numpy, safetensors and h5py are scanned by every tool. The other scanners are not
dependencies of weightkit: install them into any environment and point ``--bin`` at its
``bin`` folder; each runs as its own command line, one process per file, so a tool that crashes
or hangs on a file costs only that file.

    python3 -m venv /tmp/scanners && /tmp/scanners/bin/pip install picklescan modelscan fickling
    .venv/bin/python bench/compare_scanners.py --bin /tmp/scanners/bin [--markdown]

A tool "flags" a file when its command exits 1 (picklescan and modelscan: dangerous globals
found; fickling ``--check-safety``: likely unsafe); any other non-zero exit or a timeout is an
"error" (the tool could not judge the file: a user sees a failure, not a verdict), except
modelscan's exit 3, "unsupported" (no format it scans); exit 0 is "missed" for a malicious file
and "clean" for a benign one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import weightkit.scanner as wscan  # noqa: E402
from _malicious import ROUND_TWO, VARIANTS, build_corpus  # noqa: E402

LOADERS = {"pickle": "`pickle.load`", "pypickle": "pure-Python `pickle`", "torch": "`torch.load(weights_only=False)`",
           "numpy": "`np.load(allow_pickle=True)`", "keras": "`keras.models.load_model(safe_mode=False)`"}
TOOLS = {
    "picklescan": lambda exe, p: [exe, "--path", str(p)],
    "modelscan": lambda exe, p: [exe, "-p", str(p)],
    "fickling": lambda exe, p: [exe, "--check-safety", str(p)],
}


def run_tool(tool: str, bindir: Path, path: Path) -> str:
    """``flagged``, ``missed`` (exit 0), ``error`` (other exits, timeouts) or ``absent``."""
    exe = bindir / tool
    if not exe.exists():
        return "absent"
    try:
        # cwd: fickling writes safety_results.json into the working directory
        rc = subprocess.run(TOOLS[tool](str(exe), path), capture_output=True, timeout=60,
                            cwd=path.parent).returncode
    except subprocess.TimeoutExpired:
        return "error"
    if tool == "modelscan" and rc == 3:  # modelscan's "no supported files found"
        return "unsupported"
    return {0: "missed", 1: "flagged"}.get(rc, "error")


def benign_files(d: Path) -> dict[str, Path]:
    import h5py
    import numpy as np
    import torch
    from safetensors.torch import save_file

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    objs = {"state_dict": net.state_dict(), "adam": opt.state_dict(),
            "ckpt_numpy_scalars": {"epoch": np.int64(3), "loss": np.float64(0.5), "model": net.state_dict()},
            "bf16_fp16": {"b": torch.ones(2, dtype=torch.bfloat16), "h": torch.ones(2, dtype=torch.float16)}}
    out = {}
    for k, v in objs.items():
        out[k] = d / f"{k}.pt"
        torch.save(v, out[k])
    out["legacy"] = d / "legacy.pt"
    torch.save(objs["ckpt_numpy_scalars"], out["legacy"], _use_new_zipfile_serialization=False)
    out["safetensors"] = d / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out["safetensors"]))
    out["npz"] = d / "arrays.npz"
    np.savez(out["npz"], w=np.ones((3, 4), np.float32), b=np.zeros(3))
    out["npy"] = d / "array.npy"
    np.save(out["npy"], np.arange(6.0).reshape(2, 3))
    out["h5"] = d / "weights.h5"
    with h5py.File(out["h5"], "w") as f:
        f.create_dataset("dense/kernel", data=np.ones((4, 3), np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, required=True, help="folder holding picklescan, modelscan, fickling")
    ap.add_argument("--markdown", action="store_true", help="print the SECURITY.md tables")
    args = ap.parse_args()
    tools = list(TOOLS)
    round_two = {v.name for v in ROUND_TWO}
    with tempfile.TemporaryDirectory() as tmp:
        markers = Path(tmp, "markers")
        files = build_corpus(Path(tmp, "corpus"), markers)
        rows = [(v, wscan.scan(files[v.name]).verdict, [run_tool(t, args.bin, files[v.name]) for t in tools])
                for v in VARIANTS]
        benign = [(k, wscan.scan(p).verdict, [run_tool(t, args.bin, p) for t in tools])
                  for k, p in benign_files(Path(tmp)).items()]
        ran = sorted(p.name for p in markers.iterdir())
    cell = {"flagged": "flagged", "missed": "**missed**", "error": "error", "unsupported": "unsupported", "absent": "–"}
    if args.markdown:
        print("| variant | round | trick | runs under | weightkit | " + " | ".join(tools) + " |")
        print("| --- | --- | --- | --- | --- |" + " --- |" * len(tools))
        for v, verdict, res in rows:
            rnd = 2 if v.name in round_two else 1
            print(f"| `{v.name}` | {rnd} | {v.trick} | {LOADERS.get(v.live or '', '–')} | "
                  f"{verdict if verdict != 'safe' else '**safe**'} | "
                  + " | ".join(cell[r] for r in res) + " |")
        print()
    else:
        for v, verdict, res in rows:
            print(f"{v.name:34} weightkit={verdict:11} " + " ".join(f"{t}={r:8}" for t, r in zip(tools, res)))
        for k, verdict, res in benign:
            shown = [("clean" if r == "missed" else r) for r in res]
            print(f"benign {k:27} weightkit={verdict:11} " + " ".join(f"{t}={r:8}" for t, r in zip(tools, shown)))
    n = len(rows)
    print("| measure | weightkit.scan | " + " | ".join(tools) + " |")
    print("| --- | ---: |" + " ---: |" * len(tools))
    for label, subset in (("round 1", [r for r in rows if r[0].name not in round_two]),
                          ("round 2", [r for r in rows if r[0].name in round_two]), ("all", rows)):
        if not subset:
            continue
        wk = sum(r[1] == "malicious" for r in subset)
        per = [sum(r[2][i] == "flagged" for r in subset) for i in range(len(tools))]
        err = [sum(r[2][i] == "error" for r in subset) for i in range(len(tools))]
        print(f"| malicious {label} flagged ({len(subset)} files) | {wk}/{len(subset)} malicious | "
              + " | ".join(f"{p}/{len(subset)} (+{e} errors)" for p, e in zip(per, err)) + " |")
    wk_fp = sum(b[1] != "safe" for b in benign)
    fp = [sum(b[2][i] == "flagged" for b in benign) for i in range(len(tools))]
    print(f"| benign files flagged ({len(benign)} files) | {wk_fp} | " + " | ".join(map(str, fp)) + " |")
    print(f"\n{n} malicious files; markers created while scanning: {ran or 'none'}")


if __name__ == "__main__":
    main()
