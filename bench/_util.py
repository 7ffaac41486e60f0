"""Shared pieces of the header-only benchmarks (scan_bench, summary_bench): checkpoint layout,
timing with bytes read (``rchar`` in /proc/self/io), size options and the ratio lines."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def make_state_dict(total_mb: int, tensors: int = 64) -> dict[str, torch.Tensor]:
    per = total_mb * (1 << 20) // 4 // tensors
    cols = 1024
    rows = max(1, per // cols)
    return {f"layers.{i}.weight": torch.zeros(rows, cols) for i in range(tensors)}


def measure(fn, repeats: int = 7) -> tuple[float, int]:
    """Median seconds and median bytes read of ``repeats`` calls of ``fn``."""
    times, reads = [], []
    for _ in range(repeats):
        r0, t0 = rchar(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        reads.append(rchar() - r0)
    return statistics.median(times), int(statistics.median(reads))


def parse_sizes() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-mb", type=int, default=16)
    ap.add_argument("--big-mb", type=int, default=1024)
    return ap.parse_args()


def print_ratios(rows: list[tuple], labels: tuple[str, ...], args: argparse.Namespace) -> None:
    """For each label, the big/small time ratio of its two ``(label, mb, seconds, bytes)`` rows."""
    for label in labels:
        small, big = [row for row in rows if row[0] == label]
        print(f"{label}: time ratio {args.big_mb}MB/{args.small_mb}MB = {big[2] / small[2]:.2f}  "
              f"(bytes ratio {args.big_mb / args.small_mb:.0f}x)")
