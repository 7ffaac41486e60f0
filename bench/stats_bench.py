"""Statistics engine speed against a memory-speed floor and the naive way, in one process.

Writes a >= 1 GB float32 safetensors checkpoint of 4096x4096 matrices (and a bfloat16 one of
the same element count), then times on a warm page cache:

  (a) floor: one ``numpy.sum`` pass over the same memory-mapped bytes;
  (b) naive: ``safetensors.torch.load_file`` + per tensor mean/std/min/max/abs().max()/norm/
      (==0).sum()/isnan().sum();
  (c) ``weightkit.stats`` (full statistic set: moments, extremes, counts, histogram, quantiles).

    .venv/bin/python bench/stats_bench.py [--gb 1.0] [--repeats 3]

Peak resident memory on a 4 GB checkpoint is measured separately (see BENCHMARKS.md):

    .venv/bin/python bench/stats_bench.py --write-only --gb 4 --dir /tmp/wk4
    /usr/bin/time -v .venv/bin/weightkit stats /tmp/wk4/f32.safetensors --json > /dev/null
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import weightkit

SIDE = 4096


def write(path: Path, gb: float, dtype: torch.dtype) -> None:
    n = max(1, round(gb * 1e9 / (SIDE * SIDE * 4)))
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.weight": (torch.randn(SIDE, SIDE, generator=g) * 0.02).to(dtype) for i in range(n)}
    save_file(tensors, str(path))


def floor(path: Path) -> None:
    ws = weightkit.open(path)
    for w in ws:
        np.sum(w.raw())  # raw storage, memory-mapped; uint16 for bf16


def naive(path: Path) -> None:
    for t in load_file(str(path)).values():
        t = t.float() if t.dtype == torch.bfloat16 else t
        t.mean(), t.std(), t.min(), t.max(), t.abs().max(), t.norm(), (t == 0).sum(), t.isnan().sum()


def ours(path: Path) -> None:
    weightkit.stats(path)


def timed(fn, path, repeats) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/weightkit-bench")
    ap.add_argument("--write-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"float32": out / "f32.safetensors", "bfloat16": out / "bf16.safetensors"}
    for name, path in files.items():
        if not path.exists():
            write(path, args.gb, getattr(torch, name))
    if args.write_only:
        return
    weightkit.stats(files["bfloat16"], select="layers.0.*")  # load the compiled kernels once
    rows = {}
    for name, path in files.items():
        size = path.stat().st_size
        floor(path)  # warm the page cache
        res = {k: timed(fn, path, args.repeats if k != "naive" else 1) for k, fn in
               (("floor", floor), ("naive", naive), ("weightkit", ours))}
        rows[name] = (size, res)
        print(f"{name:9} {size / 1e9:5.2f} GB  " + "  ".join(f"{k} {size / 1e9 / v:6.2f} GB/s" for k, v in res.items()))
    for name, (size, res) in rows.items():
        print(f"{name}: weightkit/floor = {res['floor'] / res['weightkit']:.2f}x   "
              f"weightkit vs naive = {res['naive'] / res['weightkit']:.1f}x faster")
    f32 = rows["float32"][0] / rows["float32"][1]["weightkit"]
    bf16 = rows["bfloat16"][0] / rows["bfloat16"][1]["weightkit"]
    print(f"bfloat16 bytes/s relative to float32: {bf16 / f32:.2f}")


if __name__ == "__main__":
    main()
