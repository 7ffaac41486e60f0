"""weightkit.scan and picklescan on the same corpus (tests/_malicious.py) and benign files.

picklescan is not a dependency of weightkit: install it by hand to run this script
(``.venv/bin/pip install picklescan``). A picklescan result counts as "detected" when it
reports a dangerous global; "any signal" also counts its suspicious globals and scan errors.

    .venv/bin/python bench/compare_picklescan.py [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import weightkit.scanner as wscan  # noqa: E402
from _malicious import VARIANTS, build_corpus  # noqa: E402


def picklescan_result(path: Path):
    import contextlib
    import io

    from picklescan.scanner import scan_file_path

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            r = scan_file_path(str(path))
        except Exception as e:  # picklescan raising counts as a scan error
            return False, True, f"raised {type(e).__name__}"
    dangerous = r.issues_count > 0 or r.infected_files > 0
    signal = dangerous or r.suspicious_count > 0 or r.scan_err
    return dangerous, signal, f"issues={r.issues_count} suspicious={r.suspicious_count} err={r.scan_err}"


def benign_files(d: Path) -> dict[str, Path]:
    import numpy as np
    import torch

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
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true", help="print the SECURITY.md table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        markers = Path(tmp, "markers")
        files = build_corpus(Path(tmp, "corpus"), markers)
        rows = []
        for v in VARIANTS:
            rep = wscan.scan(files[v.name])
            ps_danger, ps_signal, ps_note = picklescan_result(files[v.name])
            rows.append((v, rep.verdict, ps_danger, ps_signal, ps_note))
        benign = [(k, wscan.scan(p).verdict, *picklescan_result(p)) for k, p in benign_files(Path(tmp)).items()]
        assert not any(markers.iterdir()), "a payload ran during scanning"
    n = len(rows)
    wk = sum(r[1] != "safe" for r in rows)
    wk_mal = sum(r[1] == "malicious" for r in rows)
    ps = sum(r[2] for r in rows)
    ps_any = sum(r[3] for r in rows)
    if args.markdown:
        print("| variant | trick | weightkit | picklescan |")
        print("| --- | --- | --- | --- |")
        for v, verdict, d, s, note in rows:
            pk = "detected" if d else ("signal only" if s else "**missed**")
            print(f"| `{v.name}` | {v.trick} | {'yes' if verdict != 'safe' else '**no**'} ({verdict}) | {pk} |")
        print()
    else:
        for v, verdict, d, s, note in rows:
            print(f"{v.name:28} weightkit={verdict:11} picklescan={'DETECTED' if d else 'missed':8} ({note})")
        for k, verdict, d, s, note in benign:
            print(f"benign {k:21} weightkit={verdict:11} picklescan={'FLAGGED' if d else 'clean':8} ({note})")
    print(f"malicious corpus: {n} variants")
    print(f"weightkit.scan: flagged {wk}/{n} ({100 * wk / n:.0f}%), verdict malicious {wk_mal}/{n}")
    print(f"picklescan: dangerous global reported {ps}/{n} ({100 * ps / n:.0f}%); "
          f"any signal (dangerous, suspicious or scan error) {ps_any}/{n} ({100 * ps_any / n:.0f}%)")
    print(f"benign files: weightkit false alarms {sum(b[1] != 'safe' for b in benign)}/{len(benign)}, "
          f"picklescan false alarms {sum(b[2] for b in benign)}/{len(benign)}")


if __name__ == "__main__":
    main()
