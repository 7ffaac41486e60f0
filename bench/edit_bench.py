"""Time of weightkit's edits on a 100-million-parameter torch model on CPU, each against the
plain torch code doing the same.

    KERAS_BACKEND=torch .venv/bin/python bench/edit_bench.py [--layers 24 --width 2048 --repeats 5]

The model is ``nn.Sequential`` of ``--layers`` ``nn.Linear(width, width)`` (24 × 2048² + bias ≈
100.7 M parameters, 403 MB float32). Each operation is timed ``--repeats`` times; the median is
reported, with the ratio weightkit / baseline. weightkit does more than the baseline (it
validates names, shapes, casts and NaN/Inf before writing, keeps a backup of every tensor it
writes so a failure can be undone, and resolves the selector through ``weightkit.select``); the
target is "well under a second per operation", not parity.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import weightkit  # noqa: E402


def timed(fn, repeats: int, setup=None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(a.width, a.width) for _ in range(a.layers)])
    n = sum(p.numel() for p in model.parameters())
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    one32 = rng.standard_normal((a.width, a.width), dtype=np.float32)
    one64 = one32.astype(np.float64)
    all32 = [p.detach().numpy().copy() + 1 for p in model.state_dict().values()]
    mid = f"{a.layers // 2}.weight"
    midp = model[a.layers // 2].weight

    def unfreeze_all():
        for p in params:
            p.requires_grad_(True)

    def base_set(values):
        with torch.no_grad():
            for p, v in zip(model.state_dict(keep_vars=True).values(), values):
                p.copy_(torch.from_numpy(v))

    def base_trainable():
        return ({k: p.requires_grad for k, p in model.named_parameters()},
                sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params if not p.requires_grad))

    def base_groups():
        ps = [p for p in params if p.requires_grad]
        return [{"params": [p for p in ps if p.ndim > 1], "weight_decay": 0.01},
                {"params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0}]

    def base_init():
        with torch.no_grad():
            nn.init.xavier_uniform_(midp)

    def wn_undo():
        if torch.nn.utils.parametrize.is_parametrized(model[0]):
            torch.nn.utils.parametrize.remove_parametrizations(model[0], "weight")

    rows = [
        ("freeze (all 48 tensors)", lambda: weightkit.freeze(model), unfreeze_all,
         lambda: [p.requires_grad_(False) for p in params], unfreeze_all),
        ("freeze('0.*')", lambda: weightkit.freeze(model, select="0.*"), unfreeze_all,
         lambda: [p.requires_grad_(False) for p in model[0].parameters()], unfreeze_all),
        ("trainable report", lambda: weightkit.trainable(model), None, base_trainable, None),
        ("set_weight (one 2048² tensor, float32)", lambda: weightkit.set_weight(model, mid, one32), None,
         lambda: base_set_one(midp, one32), None),
        ("set_weight (one 2048² tensor, float64 → float32)", lambda: weightkit.set_weight(model, mid, one64), None,
         lambda: base_set_one(midp, one64), None),
        ("set_weights (all, list form)", lambda: weightkit.set_weights(model, all32), None,
         lambda: base_set(all32), None),
        ("get_weights (all, dict)", lambda: weightkit.get_weights(model, as_dict=True), None,
         lambda: {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, None),
        ("init xavier_uniform (one layer, seeded)", lambda: weightkit.init(model, "xavier_uniform", mid, seed=0), None,
         base_init, None),
        ("param_groups", lambda: weightkit.param_groups(model), None, base_groups, None),
        ("weight_norm (one layer)", lambda: weightkit.weight_norm(model, select="0.weight"), wn_undo,
         lambda: torch.nn.utils.parametrizations.weight_norm(model[0]), wn_undo),
    ]
    print(f"model: {a.layers} x nn.Linear({a.width}, {a.width}) = {n:,} parameters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {a.repeats}")
    print("| operation | weightkit | plain torch | ratio |\n| --- | ---: | ---: | ---: |")
    for name, wk, wk_setup, base, base_setup in rows:
        timed(wk, 1, wk_setup)  # warm up
        t_wk = timed(wk, a.repeats, wk_setup)
        t_base = timed(base, a.repeats, base_setup)
        if base_setup:
            base_setup()
        print(f"| {name} | {ms(t_wk)} | {ms(t_base)} | {t_wk / t_base:.1f}× |", flush=True)


def ms(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t >= 0.01 else f"{t * 1e3:.3f} ms"


def base_set_one(p, v):
    with torch.no_grad():
        p.copy_(torch.from_numpy(v))


if __name__ == "__main__":
    main()
