"""Scanning reads only the pickles: its time and bytes read do not grow with tensor bytes.

For PyTorch zip checkpoints (and legacy ``torch.save`` files) of the same layout (64 tensors)
at two sizes, time ``weightkit.scan`` (median of several runs, same process) and count the
bytes the process read through system calls (``rchar`` in /proc/self/io; mmap page faults are
not counted there, so the scan's mapped reads are also bounded by timing). Baseline:
``torch.load(weights_only=True)`` on the same file, which reads every byte.

    .venv/bin/python bench/scan_bench.py [--small-mb 16] [--big-mb 1024]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _util import make_state_dict, measure, parse_sizes, print_ratios

import weightkit.scanner as wscan


def main() -> None:
    args = parse_sizes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (args.small_mb, args.big_mb):
            sd = make_state_dict(mb)
            pt, legacy = Path(tmp, f"m{mb}.pt"), Path(tmp, f"m{mb}_legacy.pt")
            torch.save(sd, pt)
            torch.save(sd, legacy, _use_new_zipfile_serialization=False)
            del sd
            for fmt, path in (("scan torch zip", pt), ("scan torch legacy", legacy)):
                assert wscan.scan(path).verdict == "safe"
                t, r = measure(lambda path=path: wscan.scan(path))
                rows.append((fmt, mb, t, r))
            t, r = measure(lambda pt=pt: torch.load(pt, weights_only=True), repeats=3)
            rows.append(("baseline torch.load", mb, t, r))
            legacy.unlink()
            pt.unlink()
    print(f"{'what':22} {'MB':>6} {'median s':>10} {'bytes read':>14}")
    for fmt, mb, t, r in rows:
        print(f"{fmt:22} {mb:>6} {t:>10.4f} {r:>14,}")
    print_ratios(rows, ("scan torch zip", "scan torch legacy", "baseline torch.load"), args)
    scan_big = next(r for r in rows if r[0] == "scan torch zip" and r[1] == args.big_mb)
    base_big = next(r for r in rows if r[0] == "baseline torch.load" and r[1] == args.big_mb)
    print(f"at {args.big_mb} MB: scan is {base_big[2] / scan_big[2]:.0f}x faster than torch.load(weights_only=True)")
    many_members()


def many_members(n: int = 3000) -> None:
    """A checkpoint of ``n`` small tensors (a transformer's layout): the cost that grows is the
    pickle walk and the zip structure (every reader's view, every local header), not tensor bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "many.pt")
        torch.save({f"layers.{i}.weight": torch.zeros(16) for i in range(n)}, path)
        scan_t, _ = measure(lambda: wscan.scan(path))
        load_t, _ = measure(lambda: torch.load(path, weights_only=True))
    print(f"{n} tensors: scan {scan_t * 1000:.1f} ms, torch.load(weights_only=True) {load_t * 1000:.1f} ms, "
          f"ratio scan/load {scan_t / load_t:.2f}")


if __name__ == "__main__":
    main()
