"""Statistics of a checkpoint of thousands of small tensors, against the naive way, in one process.

The big-file benchmark (``stats_bench.py``) measures bytes per second; a model of many small
layers (biases, norms, 64×64 matrices) measures the cost per tensor instead. Writes a safetensors
file of 500 blocks × 6 tensors (3000 tensors, 10.4 M float32 values), then times:

  (a) naive: ``safetensors.torch.load_file`` + per tensor mean/std/min/max/abs().max()/norm/
      (==0).sum()/isnan().sum();
  (b) ``weightkit.stats`` (the full statistic set, histogram and quantiles included).

    .venv/bin/python bench/stats_small_bench.py [--blocks 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import weightkit

SHAPES = {"w": (64, 64), "b": (64,), "ln.weight": (64,), "ln.bias": (64,), "w2": (64, 256), "b2": (256,)}


def naive(path: Path) -> None:
    for t in load_file(str(path)).values():
        t.mean(), t.std(), t.min(), t.max(), t.abs().max(), t.norm(), (t == 0).sum(), t.isnan().sum()


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.{n}": torch.randn(*s, generator=g) for i in range(args.blocks) for n, s in SHAPES.items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "many.safetensors"
        save_file(tensors, str(path))
        weightkit.stats(path)  # compiled kernels loaded, page cache warm
        res = {"naive": timed(lambda: naive(path), args.repeats),
               "weightkit": timed(lambda: weightkit.stats(path), args.repeats)}
    n = len(tensors)
    print(f"{n} tensors, {sum(t.numel() for t in tensors.values()) / 1e6:.1f} M float32 values")
    for k, v in res.items():
        print(f"  {k:9s} {v:6.3f} s  {v / n * 1e6:6.1f} us per tensor")
    print(f"weightkit vs naive: {res['naive'] / res['weightkit']:.2f}x")


if __name__ == "__main__":
    main()
