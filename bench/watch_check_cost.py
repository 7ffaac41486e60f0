"""What the per-step NaN/Inf check of ``weightkit.watch`` costs, and which half (issue 5).

The MLP of ``watch_bench.py`` (784 → 512 → 256 → 10, Adam, batch 64), torch on one thread, CPU
time of the training thread, configurations interleaved in blocks of 10 steps in one process:

  off        plain training
  step       ``watch(every=10)`` (the default ``nan_check="step"``): NaN/Inf looked for in every
             gradient on every step; the weights on measured steps and around a non-finite gradient
  all        ``watch(every=10, nan_check="all")``: in every gradient and every weight on every step
  measured   ``watch(every=10, nan_check="measured")``: only on measured steps

``step − measured`` is the gradients' per-step check, ``all − step`` the weights'.

    python bench/watch_check_cost.py [--steps 2000]
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
import watch_bench  # noqa: E402  (the MLP, and the fixed malloc thresholds)

import weightkit  # noqa: E402
import weightkit.watch  # noqa: E402,F401


def main() -> int:
    if any(os.environ.get(k) != v for k, v in watch_bench.PINNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **watch_bench.PINNED_MALLOC})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    base = watch_bench.mlp()
    batches = [(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))) for _ in range(8)]
    loss_fn = nn.CrossEntropyLoss()
    configs = {}
    with tempfile.TemporaryDirectory() as run_dir:
        for key in ("off", "step", "all", "measured"):
            model = watch_bench.mlp()
            model.load_state_dict(base.state_dict())
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            w = None
            if key != "off":
                w = weightkit.watch(model, optimizer=opt, run_dir=run_dir,
                                    nan_check=key)
            configs[key] = (model, opt, w, [])

        def one(key: str, k: int) -> float:
            model, opt, _, _ = configs[key]
            x, y = batches[k % len(batches)]
            t0 = time.thread_time()
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            return time.thread_time() - t0

        for key in configs:
            for k in range(30):
                one(key, k)
        for k in range(0, args.steps, 10):
            for key, (_, _, w, times) in configs.items():
                times.extend(one(key, k + j) for j in range(10))
                if w is not None:
                    w.flush()
        off = statistics.median(configs["off"][3])
        print(f"MLP, {args.steps} steps per configuration, median CPU time per step")
        for key, (_, _, w, times) in configs.items():
            med = statistics.median(times)
            print(f"  {key:10s} {med * 1e3:7.3f} ms  ratio {med / off:6.3f}  overhead {1e6 * (med - off):+7.1f} us")
            if w is not None:
                w.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
