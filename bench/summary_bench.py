"""Summary reads only headers: its time and bytes read do not grow with tensor bytes.

For safetensors and PyTorch zip checkpoints of the same layout (same tensor count) at
two sizes, time ``weightkit.summary`` (median of several runs, same process) and count the
bytes the process read through system calls (``rchar`` in /proc/self/io). Baseline for
comparison: ``torch.load(weights_only=True)`` without mmap, which reads every byte.

    .venv/bin/python bench/summary_bench.py [--big-mb 1024]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import weightkit


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
    times, reads = [], []
    for _ in range(repeats):
        r0, t0 = rchar(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        reads.append(rchar() - r0)
    return statistics.median(times), int(statistics.median(reads))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-mb", type=int, default=16)
    ap.add_argument("--big-mb", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for mb in (args.small_mb, args.big_mb):
            sd = make_state_dict(mb)
            st, pt = Path(tmp, f"m{mb}.safetensors"), Path(tmp, f"m{mb}.pt")
            save_file(sd, str(st))
            torch.save(sd, pt)
            del sd
            for fmt, path in (("safetensors", st), ("torch", pt)):
                t, r = measure(lambda: weightkit.summary(path))
                rows.append((fmt, mb, t, r))
            t, r = measure(lambda: torch.load(pt, weights_only=True), repeats=3)
            rows.append(("baseline torch.load", mb, t, r))
        print(f"{'source':22} {'MB':>6} {'median s':>10} {'bytes read':>12}")
        for fmt, mb, t, r in rows:
            print(f"{fmt:22} {mb:>6} {t:>10.4f} {r:>12,}")
        for fmt in ("safetensors", "torch", "baseline torch.load"):
            small, big = [row for row in rows if row[0] == fmt]
            print(f"{fmt}: time ratio {args.big_mb}MB/{args.small_mb}MB = {big[2] / small[2]:.2f}  "
                  f"(bytes ratio {args.big_mb / args.small_mb:.0f}x)")


if __name__ == "__main__":
    main()
