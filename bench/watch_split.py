"""Where the time of ``weightkit.watch`` goes inside real training steps (issue 5).

The MLP or CNN of ``watch_bench.py`` (Adam, batch 64), torch on one thread, one watch
(``every=10``, ``--nan-check`` as given) over ``--steps`` steps; each stage of the watcher is
timed in CPU time of the training thread as it runs inside the step (caches as the backward pass
and the optimizer leave them, which is what makes a few microseconds of Python cost tens), and
the medians are printed, for unmeasured and measured steps apart:

  _scan_grads   the per-step NaN/Inf check of the gradients (end of backward, CPU)
  pre_step      the optimizer pre-step hook (measured steps: the weight copies)
  post_step     the optimizer post-step hook (measured steps: norms, judging, queueing)
  _check_host   within post_step on measured steps: ‖w‖ and ‖Δw‖ in one pass
  _commit       within post_step on measured steps: rows, alerts, the store's queue
  grad_stats    a gradient's statistics in its hook on a measured step (per parameter)

    python bench/watch_split.py [--model mlp|cnn] [--steps 600] [--nan-check step|all|measured]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import watch_bench  # noqa: E402  (the models, and the fixed malloc thresholds)

import weightkit  # noqa: E402
import weightkit.tracking  # noqa: E402,F401
from weightkit.tracking import _torch  # noqa: E402

STAGES = ("_scan_grads", "pre_step", "post_step", "_check_host", "_commit")  # _scan_grads measures on measured steps


def main() -> int:
    if any(os.environ.get(k) != v for k, v in watch_bench.PINNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **watch_bench.PINNED_MALLOC})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--nan-check", choices=("step", "all", "measured"), default="step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    times: dict[tuple[str, bool], list[int]] = {}

    def timed(name, f):
        def run(self, *a, **k):
            measuring = self.measuring
            t0 = time.thread_time_ns()
            try:
                return f(self, *a, **k)
            finally:
                times.setdefault((name, measuring), []).append(time.thread_time_ns() - t0)
        return run

    for name in STAGES:
        setattr(_torch.Core, name, timed(name, getattr(_torch.Core, name)))
    stats = _torch.grad_stats

    def grad_stats(g):
        t0 = time.thread_time_ns()
        try:
            return stats(g)
        finally:
            times.setdefault(("grad_stats", True), []).append(time.thread_time_ns() - t0)

    _torch.grad_stats = grad_stats
    torch.manual_seed(0)
    model = watch_bench.mlp() if args.model == "mlp" else watch_bench.cnn()
    shape = (1, 28, 28) if args.model == "mlp" else (3, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
    steps: dict[bool, list[int]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as run_dir:
        with weightkit.watch(model, optimizer=opt, run_dir=run_dir, nan_check=args.nan_check) as w:
            for _k in range(args.steps):
                measuring = w._core.measuring
                t0 = time.thread_time_ns()
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                steps[measuring].append(time.thread_time_ns() - t0)
    print(f"{args.model}, every=10, nan_check={args.nan_check!r}, {args.steps} steps; median CPU time (us)")
    print(f"  step: unmeasured {statistics.median(steps[False]) / 1e3:9.1f}   measured {statistics.median(steps[True]) / 1e3:9.1f}")
    for (name, measuring), t in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  {name:12s} {'measured' if measuring else 'unmeasured':10s} {statistics.median(t) / 1e3:9.1f}  ({len(t)} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
