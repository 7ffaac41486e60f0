"""Prune and quantise: streaming memory on files, pruning accuracy, quantised sizes, SQNR vs
theory, and the time of each operation on a 100-million-parameter model.

    .venv/bin/python bench/compress_bench.py [--tensors 8 --tensor-mb 64] [--append]

1. Memory. A safetensors checkpoint of ``--tensors`` float32 tensors of ``--tensor-mb`` MB each
   is pruned / quantised / measured / re-saved from the file, each operation in a fresh
   process. Peak memory is the rise of the process's resident-set high-water mark (VmHWM,
   reset through /proc/self/clear_refs after imports and compilation) over its resident set
   before the operation, and tracemalloc's peak (NumPy's allocations). Target: ≤ 2× the
   largest tensor.
2. Pruning accuracy: global magnitude pruning of a ResNet-style convolution stack at
   several amounts; |sparsity − amount| over the prunable weights. Target: ≤ 0.1 %.
3. Sizes: 8-bit per-channel and 4-bit per-group (128) checkpoints of an MLP and the CNN, over
   their float32 bytes. Targets: ≤ 26 % and ≤ 14 %.
4. SQNR vs theory for Gaussian weights, per-channel symmetric int8 and int4:
   6.02·bits + 4.77 − 20·log10(absmax/std) dB (absmax combined over channels in power).
5. Time on a 100-M-parameter model (one Linear 10000×10000 + bias) on CPU: weightkit.prune
   (live, magnitude 0.5) vs ``torch.nn.utils.prune.l1_unstructured``, quantize_error,
   quantize to a file, save.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import json, sys, time, tracemalloc
    import numpy as np
    import weightkit

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    op, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
    # warm up: imports, numba kernels loaded from the cache
    warm = {"fc.weight": np.ones((64, 64), np.float32)}
    weightkit.prune(warm, 0.5, out=out + ".warm")
    weightkit.quantize(warm, out + ".warm", bits=4, granularity="group")
    weightkit.quantize_error(warm)
    ops = {
        "prune magnitude (layer)": lambda: weightkit.prune(src, 0.5, out=out),
        "prune magnitude (global)": lambda: weightkit.prune(src, 0.5, scope="global", out=out),
        "prune l2-structured": lambda: weightkit.prune(src, 0.5, method="l2-structured", out=out),
        "quantize int8 channel": lambda: weightkit.quantize(src, out, bits=8, granularity="channel"),
        "quantize int4 group 128": lambda: weightkit.quantize(src, out, bits=4, granularity="group"),
        "quantize_error int8 channel": lambda: weightkit.quantize_error(src, granularity="channel"),
        "save (copy to safetensors)": lambda: weightkit.save(src, out),
    }
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    base = status("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    ops[op]()
    seconds = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"op": op, "seconds": seconds, "rss_peak_rise": status("VmHWM") - base, "traced_peak": traced}))
""")

OPS = ["prune magnitude (layer)", "prune magnitude (global)", "prune l2-structured", "quantize int8 channel",
       "quantize int4 group 128", "quantize_error int8 channel", "save (copy to safetensors)"]


def memory(tmp: Path, tensors: int, tensor_mb: int) -> tuple[list[dict], int]:
    from safetensors.numpy import save_file

    rows = 1024
    cols = tensor_mb * (1 << 20) // 4 // rows
    src = tmp / "big.safetensors"
    rng = np.random.default_rng(0)
    state = {f"layers.{i}.weight": rng.standard_normal((rows, cols), dtype=np.float32) for i in range(tensors)}
    save_file(state, str(src))
    largest = max(v.nbytes for v in state.values())
    del state
    script = tmp / "child.py"
    script.write_text(CHILD)
    out = []
    for op in OPS:
        res = subprocess.run([sys.executable, str(script), op, str(src), str(tmp / "out.safetensors")],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out, largest


def resnet_like():
    import torch
    from torch import nn

    torch.manual_seed(2)
    layers, c_in = [nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()], 64
    for c in (64, 64, 128, 128, 256, 256, 512, 512):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def mlp():
    import torch
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def pruning_accuracy() -> list[tuple[float, float, int]]:
    import copy

    import weightkit

    base = resnet_like()
    rows = []
    for amount in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        r = weightkit.prune(copy.deepcopy(base), amount, scope="global")
        rows.append((amount, r.sparsity, r.numel))
    return rows


def sizes(tmp: Path) -> list[tuple[str, int, int, int]]:
    import weightkit

    rows = []
    for name, build in (("MLP 784-1024-1024-10", mlp), ("CNN (ResNet-style conv stack, 64→512 channels)", resnet_like)):
        model = build()
        fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
        r8 = weightkit.quantize(model, tmp / "q8.safetensors", bits=8, granularity="channel")
        r4 = weightkit.quantize(model, tmp / "q4.safetensors", bits=4, granularity="group", group_size=128)
        rows.append((name, fp32, r8.file_bytes, r4.file_bytes))
    return rows


def sqnr() -> list[tuple[int, float, float, float]]:
    import weightkit

    w = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32) * 0.02
    absmax = np.abs(w).max(axis=1)
    ratio = np.sqrt(np.mean(absmax ** 2)) / w.std()
    rows = []
    for bits in (8, 4):
        measured = weightkit.quantize_error({"fc.weight": w}, bits=bits, granularity="channel")["fc.weight"].sqnr_db
        theory = 6.02 * bits + 4.77 - 20 * np.log10(ratio)
        # symmetric codes use ±(2^(b-1) - 1) levels, not 2^(b-1): the step is that much coarser
        levels = 2 ** (bits - 1)
        rows.append((bits, measured, theory, theory - 20 * np.log10(levels / (levels - 1))))
    return rows


def big_model_times(tmp: Path, with_torch: bool) -> list[tuple[str, float]]:
    import torch
    from torch.nn.utils import prune as tprune

    import weightkit

    weightkit.prune(torch.nn.Linear(8, 8), 0.5)  # load the kernels
    rows = []

    def timed(label, fn, model=None):
        t0 = time.perf_counter()
        fn()
        rows.append((label, time.perf_counter() - t0))

    def timed_prune(label, prune, baseline=False):
        """Median of 3 prunes of a fresh 10000×10000 Linear, each undone after (plain weight again)."""
        lin = torch.nn.Linear(10000, 10000)
        w0 = lin.weight.detach().clone()
        times = []
        for _ in range(1 if baseline else 3):
            with torch.no_grad():
                lin.weight.copy_(w0)
            t0 = time.perf_counter()
            prune(lin)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            weightkit.make_permanent(lin)
            perm.append(time.perf_counter() - t0)
        rows.append((label, sorted(times)[len(times) // 2]))

    torch.manual_seed(0)
    perm: list[float] = []
    timed_prune("weightkit.prune(model, 0.5) [100 M params]", lambda m: weightkit.prune(m, 0.5))
    timed_prune("weightkit.prune(model, 0.5, scope='global')", lambda m: weightkit.prune(m, 0.5, scope="global"))
    rows.append(("weightkit.make_permanent", sorted(perm)[len(perm) // 2]))
    mask = (torch.rand(10000, 10000) >= 0.5).float()
    timed_prune("baseline torch.nn.utils.prune.custom_from_mask (mask given)",
                lambda m: tprune.custom_from_mask(m, "weight", mask), baseline=True)
    if with_torch:
        timed_prune("baseline torch.nn.utils.prune.l1_unstructured(0.5)",
                    lambda m: tprune.l1_unstructured(m, "weight", 0.5), baseline=True)
    lin4 = torch.nn.Linear(10000, 10000)
    timed("weightkit.quantize_error(model, granularity='channel')",
          lambda: weightkit.quantize_error(lin4, granularity="channel"))
    timed("weightkit.quantize(model, out, bits=8, granularity='channel')",
          lambda: weightkit.quantize(lin4, tmp / "big_q.safetensors", bits=8, granularity="channel"))
    timed("weightkit.save(model, out) (400 MB, fsync)", lambda: weightkit.save(lin4, tmp / "big.safetensors"))
    timed("weightkit.load_into(model, out)", lambda: weightkit.load_into(lin4, tmp / "big.safetensors"))
    return rows


def fmt_mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--tensor-mb", type=int, default=64)
    ap.add_argument("--no-torch-baseline", action="store_true", help="skip torch's l1_unstructured (about 20 s)")
    ap.add_argument("--append", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()

    lines = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        tmp = Path(d)
        mem, largest = memory(tmp, args.tensors, args.tensor_mb)
        (tmp / "big.safetensors").unlink()
        lines += [f"### Memory on files ({args.tensors} × {args.tensor_mb} MB float32 tensors = "
                  f"{fmt_mb(args.tensors * largest)}; largest tensor {fmt_mb(largest)})", "",
                  "| operation (from the file, into a new file) | time | peak RSS rise | tracemalloc peak | "
                  "peak / largest tensor |", "| --- | ---: | ---: | ---: | ---: |"]
        for m in mem:
            peak = max(m["rss_peak_rise"], m["traced_peak"])
            lines.append(f"| {m['op']} | {m['seconds']:.2f} s | {fmt_mb(m['rss_peak_rise'])} | "
                         f"{fmt_mb(m['traced_peak'])} | {peak / largest:.2f}× |")
        acc = pruning_accuracy()
        lines += ["", "### Global magnitude pruning: sparsity of the prunable weights (ResNet-style conv stack, "
                  f"{acc[0][2] / 1e6:.1f} M prunable weights)", "", "| amount | sparsity | error |", "| ---: | ---: | ---: |"]
        lines += [f"| {a:.2f} | {s:.6f} | {abs(s - a) * 100:.5f} % |" for a, s, _ in acc]
        sz = sizes(tmp)
        lines += ["", "### Quantised checkpoint size (file bytes, header and unquantised tensors included)", "",
                  "| model | float32 | int8 per channel | int4 per group of 128 |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {fmt_mb(f)} | {fmt_mb(q8)} ({q8 / f:.1%}) | {fmt_mb(q4)} ({q4 / f:.1%}) |"
                  for n, f, q8, q4 in sz]
        sq = sqnr()
        lines += ["", "### SQNR, Gaussian weights 1024×4096, per-channel symmetric", "",
                  "| bits | measured | theory 6.02·b + 4.77 − 20·log10(absmax/std) | difference | "
                  "theory with the ±(2^(b−1)−1) levels symmetric codes use | difference |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {b} | {m:.2f} dB | {t:.2f} dB | {m - t:+.2f} dB | {t2:.2f} dB | {m - t2:+.2f} dB |"
                  for b, m, t, t2 in sq]
        times = big_model_times(tmp, not args.no_torch_baseline)
        lines += ["", "### A 100-M-parameter model on CPU (Linear 10000×10000)", "", "| operation | time |",
                  "| --- | ---: |"]
        lines += [f"| {label} | {s:.2f} s |" for label, s in times]
    text = "\n".join(lines)
    print(text)
    if args.append:
        cmd = ".venv/bin/python bench/compress_bench.py" + (
            f" --tensors {args.tensors} --tensor-mb {args.tensor_mb}" if (args.tensors, args.tensor_mb) != (8, 64) else "")
        section = (f"\n## Prune and quantise (`bench/compress_bench.py`)\n\n"
                   "Targets (issue 4): pruning and quantising files stream tensor by tensor (memory ≤ 2× the largest "
                   "tensor); global magnitude pruning at amount a gives sparsity a ± 0.1 %; int8 per-channel SQNR "
                   "close to theory; 8-bit checkpoints ≤ 26 % and 4-bit ≤ 14 % of the float32 bytes.\n\n"
                   f"```\n{cmd}\n```\n\nResult on {datetime.date.today().isoformat()}:\n\n{text}\n")
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
