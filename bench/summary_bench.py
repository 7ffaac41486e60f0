"""Summary reads only headers: its time and bytes read do not grow with tensor bytes.

For safetensors and PyTorch zip checkpoints of the same layout (same tensor count) at
two sizes, time ``weightkit.summary`` (median of several runs, same process) and count the
bytes the process read through system calls (``rchar`` in /proc/self/io). Baseline for
comparison: ``torch.load(weights_only=True)`` without mmap, which reads every byte.

    .venv/bin/python bench/summary_bench.py [--big-mb 1024]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _util import make_state_dict, measure, parse_sizes, print_ratios
from safetensors.torch import save_file

import weightkit


def main() -> None:
    args = parse_sizes()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for mb in (args.small_mb, args.big_mb):
            sd = make_state_dict(mb)
            st, pt = Path(tmp, f"m{mb}.safetensors"), Path(tmp, f"m{mb}.pt")
            save_file(sd, str(st))
            torch.save(sd, pt)
            del sd
            for fmt, path in (("safetensors", st), ("torch", pt)):
                t, r = measure(lambda path=path: weightkit.summary(path))
                rows.append((fmt, mb, t, r))
            t, r = measure(lambda pt=pt: torch.load(pt, weights_only=True), repeats=3)
            rows.append(("baseline torch.load", mb, t, r))
        print(f"{'source':22} {'MB':>6} {'median s':>10} {'bytes read':>12}")
        for fmt, mb, t, r in rows:
            print(f"{fmt:22} {mb:>6} {t:>10.4f} {r:>12,}")
        print_ratios(rows, ("safetensors", "torch", "baseline torch.load"), args)


if __name__ == "__main__":
    main()
