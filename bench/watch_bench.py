"""Overhead of ``weightkit.watch`` on CPU training loops (issue 5), against TensorBoard histograms.

Two models, Adam, batch 64, on the CPU:
  (a) a small CNN: Conv2d(3, 16, 3) → ReLU → MaxPool → Conv2d(16, 32, 3) → ReLU → MaxPool → Linear(32·6·6, 10),
      32×32 RGB inputs;
  (b) an MLP 784 → 512 → 256 → 10 (ReLU), batch 64 (``--mlp-batch`` to change).

By default every configuration trains one and the same model (each watched slot starts a fresh
watch and stops it, untimed), in rounds: an unwatched slot before each watched configuration's
slot, then TensorBoard's; each slot runs ``--block`` steps untimed, then ``--block`` timed steps
(a multiple of 10, so every block holds the same share of measured steps), after a random-size
allocation that gives it a heap layout of its own. A training step's time depends on where its
tensors land: with each configuration on its own copy of the model (``--copies``, the former
mode), unwatched copies interleaved step by step differed by up to 8%. Configurations:
  off          plain training; the baseline is the median of all unwatched steps, and the medians
               of the ``--off-copies`` groups its slots take turns in (printed) are the noise floor
               of every ratio
  every=10     ``weightkit.watch(model, optimizer=opt)`` (the default every=10, histograms every 10th measured step,
               NaN/Inf looked for on every step)
  every=10,m   the same with ``nan_check="measured"`` (NaN/Inf looked for on measured steps only)
  every=1      ``weightkit.watch(model, optimizer=opt, every=1)``
  tb-hist      ``SummaryWriter.add_histogram`` of every parameter and every gradient at every step
               (when the ``tensorboard`` package is missing: emulated with the work add_histogram does
               before writing, ``.detach().cpu().numpy()`` + ``np.histogram`` on TensorBoard's default
               bucket edges, per tensor; the report says which one ran)

Step time is measured around zero_grad + forward + backward + optimizer step; the ratio is of
medians over all timed steps. ``--clock wall`` (default) times wall-clock with torch's default
threads; on a shared machine, where other processes preempt the run, ``--clock cpu`` runs torch on
one thread and times the CPU time of that thread (``time.thread_time``), which waiting for a core
does not inflate (the watchers' writer thread is not counted; it does a few SQLite inserts per
measured step). Run:  python bench/watch_bench.py [--steps 300] [--block 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

import weightkit
import weightkit.tracking  # a callable module: weightkit.tracking(model, ...)


def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 6 * 6, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def tb_default_bins():
    """TensorBoard's ``default_bins``: exponential buckets 1e-12·1.1^k up to 1e20, mirrored."""
    v, buckets = 1e-12, []
    while v < 1e20:
        buckets.append(v)
        v *= 1.1
    return np.array([-x for x in reversed(buckets)] + [0.0] + buckets)


class TBHist:
    """``add_histogram`` of every parameter and gradient, each step (real or emulated)."""

    def __init__(self, model, logdir):
        self.model = model
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(logdir)
            self.kind = "real SummaryWriter.add_histogram"
        except ImportError:
            self.writer = None
            self.bins = tb_default_bins()
            self.kind = "emulated (tensorboard not installed): .cpu().numpy() + np.histogram on TB's default bins"
        self.step = 0

    def log(self):
        for n, p in self.model.named_parameters():
            for tag, t in ((n, p), (n + ".grad", p.grad)):
                if t is None:
                    continue
                if self.writer is not None:
                    self.writer.add_histogram(tag, t, self.step)
                else:
                    np.histogram(t.detach().cpu().numpy(), bins=self.bins)
        self.step += 1

    def flush(self):
        """Wait until TensorBoard's writer thread has written what it was given."""
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


CLOCK = time.perf_counter


WATCHED = {"every=10": {}, "every=10,m": {"nan_check": "measured"}, "every=1": {"every": 1}}


def bench(make, x_shape, *, steps: int, block: int, run_dir: str, batch: int = 64, off_copies: int = 3):
    """Every configuration on its own copy of the model (``--copies``): the baseline is the mean of
    ``off_copies`` unwatched copies' medians."""
    torch.manual_seed(0)
    base = make()
    batches = [(torch.randn(batch, *x_shape), torch.randint(0, 10, (batch,))) for _ in range(8)]
    loss_fn = nn.CrossEntropyLoss()
    configs = {}
    offs = ["off"] + [f"off#{c}" for c in range(2, off_copies + 1)]
    for key in (*offs, *WATCHED, "tb-hist"):
        m = make()
        m.load_state_dict(base.state_dict())
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        w = tb = None
        if key in WATCHED:
            w = weightkit.watch(m, optimizer=opt, run_dir=run_dir, **WATCHED[key])
        elif key == "tb-hist":
            tb = TBHist(m, f"{run_dir}/tb-{make.__name__}")
        configs[key] = (m, opt, w, tb, [])

    def one(key, k):
        m, opt, w, tb, times = configs[key]
        x, y = batches[k % len(batches)]
        t0 = CLOCK()
        opt.zero_grad()
        loss_fn(m(x), y).backward()
        opt.step()
        if tb is not None:
            tb.log()
        return CLOCK() - t0

    for key in configs:
        for k in range(20):
            one(key, k)
    k = 0
    while k < steps:
        for key in configs:
            for j in range(block):
                configs[key][4].append(one(key, k + j))
            for writer in configs[key][2:4]:  # the watcher's or TensorBoard's, untimed
                if writer is not None:
                    writer.flush()
        k += block
    kind = None
    for key, (m, opt, w, tb, _) in configs.items():
        if w is not None:
            w.stop()
        if tb is not None:
            kind = tb.kind
            tb.close()
    med = {key: statistics.median(c[4]) for key, c in configs.items()}
    copies = [med.pop(k) for k in offs]
    med = {"off": statistics.fmean(copies), **med}
    return med, kind, {key: len(c[4]) for key, c in configs.items()}, copies


def bench_same(make, x_shape, *, steps: int, block: int, run_dir: str, batch: int = 64, off_copies: int = 2):
    """Every configuration trains one and the same model (the default), so no median carries a
    copy's memory layout (``--copies`` shows how much that is). A round is: an unwatched slot
    before each watched configuration's slot, then TensorBoard's. A watched slot starts a fresh
    watch (untimed), runs ``block`` steps untimed (what ran before has left the caches and the
    allocator as it left them), then ``block`` timed steps, and stops the watch (untimed, its store
    flushed); an unwatched slot runs the same untimed and timed steps. A block of 10 steps holds
    one measured step of ``every=10``, as a long run does. The unwatched slots take turns in
    ``off_copies`` groups, whose spread is the noise that is left."""
    torch.manual_seed(0)
    m = make()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    batches = [(torch.randn(batch, *x_shape), torch.randint(0, 10, (batch,))) for _ in range(8)]
    loss_fn = nn.CrossEntropyLoss()
    tb = TBHist(m, f"{run_dir}/tb-{make.__name__}")
    offs = ["off"] + [f"off#{c}" for c in range(2, off_copies + 1)]
    times: dict[str, list[float]] = {key: [] for key in [*offs, *WATCHED, "tb-hist"]}

    def one(k, log):
        x, y = batches[k % len(batches)]
        t0 = CLOCK()
        opt.zero_grad()
        loss_fn(m(x), y).backward()
        opt.step()
        if log:
            tb.log()
        return CLOCK() - t0

    for k in range(20):
        one(k, False)
    k, runs, n_off = 0, 0, 0
    rng = random.Random(0)
    while k < steps:
        slots = []
        for key in WATCHED:
            slots += [offs[n_off % len(offs)], key]
            n_off += 1
        for key in [*slots, "tb-hist"]:
            # a fresh heap layout for each slot: the gradients are freed and a buffer of random size
            # may take their place, so they (and what backward allocates) land elsewhere
            opt.zero_grad(set_to_none=True)
            shim = torch.empty(rng.randrange(16, 1 << 19))  # noqa: F841  (kept alive for the slot)
            w = None
            if key in WATCHED:
                runs += 1
                w = weightkit.watch(m, optimizer=opt, run_dir=run_dir, name=f"{make.__name__}-{runs}", **WATCHED[key])
            for j in range(2 * block):  # the first block warms up, untimed, keeping the measured-step phase
                t = one(k + j, key == "tb-hist")
                if j >= block:
                    times[key].append(t)
            if w is not None:
                w.stop()
            elif key == "tb-hist":
                tb.flush()
        k += block
    tb.close()
    med = {key: statistics.median(t) for key, t in times.items()}
    copies = [med.pop(key) for key in offs]
    med = {"off": statistics.median([t for key in offs for t in times[key]]), **med}
    return med, tb.kind, {key: len(t) for key, t in times.items()}, copies


# glibc's dynamic mmap threshold makes a training step's speed depend on what ran before it
# (a block of TensorBoard histograms could halve or double the next configuration's step time);
# fixed thresholds give every configuration the same allocator behaviour
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def main(argv=None) -> int:
    if argv is None and "--default-malloc" not in sys.argv and any(os.environ.get(k) != v for k, v in PINNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default-malloc", action="store_true",
                    help="Keep glibc's dynamic mmap threshold (by default the bench re-runs itself with fixed ones).")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--mlp-batch", type=int, default=64)
    ap.add_argument("--only", choices=("cnn", "mlp"), default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--copies", action="store_true",
                    help="Train each configuration on its own copy of the model (by default all train one model, "
                         "a fresh watch per block).")
    ap.add_argument("--off-copies", type=int, default=None,
                    help="Groups the unwatched slots take turns in, whose medians are the noise floor (default "
                         "2); with --copies: unwatched copies, the baseline the mean of their medians (default 3).")
    args = ap.parse_args(argv)
    # the fresh watches' alerts (a learning rate "too low" on this short run) would bury the table
    logging.getLogger("weightkit.watch").setLevel(logging.ERROR)
    global CLOCK
    if args.clock == "cpu":
        torch.set_num_threads(1)
        CLOCK = time.thread_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, {args.clock} clock, {args.steps} timed steps per "
          f"configuration, interleaved in blocks of {args.block}, "
          f"{'a copy of the model per configuration' if args.copies else 'one model, a fresh watch per block'}; malloc "
          f"{'default' if args.default_malloc else 'thresholds fixed (' + ', '.join(f'{k}={v}' for k, v in PINNED_MALLOC.items()) + ')'}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for make, shape, batch in ((cnn, (3, 32, 32), 64), (mlp, (1, 28, 28), args.mlp_batch)):
            if args.only and make.__name__ != args.only:
                continue
            run = bench if args.copies else bench_same
            offs = args.off_copies if args.off_copies is not None else (3 if args.copies else 2)
            med, kind, counts, copies = run(make, shape, steps=args.steps, block=args.block, run_dir=d, batch=batch,
                                            off_copies=max(1, offs))
            off = med["off"]
            over = {k: med[k] - off for k in med}
            print(f"\n{make.__name__} (batch {batch}): median step {'CPU ' if args.clock == 'cpu' else ''}time over "
                  f"{counts['every=10']} steps ({sum(v for k, v in counts.items() if k.startswith('off'))} unwatched); "
                  f"tb-hist: {kind}")
            what = "copies" if args.copies else "slots (the same model)"
            print(f"  unwatched {what}: {', '.join(f'{c / off:.3f}' for c in copies)} of the baseline (the noise floor)")
            for key in med:
                print(f"  {key:11s} {1e3 * med[key]:8.3f} ms  ratio {med[key] / off:6.3f}  overhead {1e3 * over[key]:+8.3f} ms")
            for key in ("every=10", "every=10,m", "every=1"):
                o = over[key]
                beat = over["tb-hist"] / o if o > 0 else float("inf")
                print(f"  tb-hist overhead / watch({key}) overhead: "
                      f"{'∞ (no measurable overhead)' if beat == float('inf') else f'{beat:.1f}×'}")
            rows.append((make.__name__, med, over))
    ok = all(med["every=10"] / med["off"] <= 1.05 and med["every=1"] / med["off"] <= 1.25 and
             over["tb-hist"] >= 10 * max(over["every=10"], 0) for _, med, over in rows)
    print("\ntargets (every=10 ≤ 1.05×, every=1 ≤ 1.25×, tb-hist overhead ≥ 10× watch(every=10)'s):",
          "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
