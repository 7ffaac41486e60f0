"""The statistics engine against an independent float64 NumPy reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import weightkit
from weightkit.analyses.statistics.engine import compute
from weightkit.core.weightset import WeightSet
from weightkit.sources import RawTensor, ReaderBase

TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}


def reference(t: torch.Tensor) -> dict:
    """Every statistic, computed independently in float64 NumPy."""
    x = t.to(torch.float64).numpy().ravel() if t.is_floating_point() else t.numpy().astype(np.float64).ravel()
    fin = x[np.isfinite(x)]
    ref = {
        "count": x.size,
        "finite": fin.size,
        "nan": int(np.isnan(x).sum()),
        "posinf": int(np.isposinf(x).sum()),
        "neginf": int(np.isneginf(x).sum()),
        "zeros": int((x == 0).sum()),
        "l2_norm": float(np.sqrt(np.sum(fin * fin))),
        "fin": fin,
    }
    if fin.size:
        ref.update(mean=fin.mean(), std=fin.std(), min=fin.min(), max=fin.max(), absmax=np.abs(fin).max())
    return ref


def check(ts, t: torch.Tensor, eps: float = 1e-6):
    ref = reference(t)
    for key in ("count", "finite", "nan", "posinf", "neginf", "zeros"):
        assert getattr(ts, key) == ref[key], key
    fin = ref["fin"]
    assert ts.small == int((np.abs(fin) < eps).sum()) + 0  # NaN/Inf are never small
    scale = float(np.abs(fin).max()) if fin.size else 1.0
    assert ts.l2_norm == pytest.approx(ref["l2_norm"], rel=1e-6, abs=1e-12 * scale)
    if not fin.size:
        assert ts.mean is None and ts.min is None and ts.hist_counts == []
        return
    assert ts.min == ref["min"] and ts.max == ref["max"] and ts.absmax == ref["absmax"]
    assert ts.mean == pytest.approx(ref["mean"], rel=1e-6, abs=1e-12 * scale)
    assert ts.std == pytest.approx(ref["std"], rel=1e-6, abs=1e-12 * scale)
    # the histogram is exact on its own edges
    counts, _ = np.histogram(fin, bins=np.array(ts.hist_edges))
    assert counts.tolist() == ts.hist_counts
    assert sum(ts.hist_counts) == fin.size
    assert ts.hist_edges[0] <= ref["min"] and ts.hist_edges[-1] > ref["max"]
    for q, value in ts.quantiles.items():
        exact = np.quantile(fin, float(q))
        assert abs(value - exact) <= ts.quantile_error * (1 + 1e-9), (q, value, exact)


def stats_of(tensors: dict, **kw):
    ws = weightkit.open(tensors)
    out, _ = compute(list(ws), **kw)
    return {s.name: s for s in out}


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(sorted(TORCH_DTYPES)))
    n = draw(st.sampled_from([0, 1, 2, 7, 100, 5000, 20000]))
    kind = draw(st.sampled_from(["normal", "zeros", "shifted", "wide"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    if kind == "zeros":
        x = np.zeros(n)
    elif kind == "shifted":  # |mean| >> std: the case where float32 sums lose digits
        x = 1000.0 + g.standard_normal(n) * 1e-2
    elif kind == "wide":
        x = g.standard_normal(n) * 10.0 ** g.integers(-8, 8, n)
    else:
        x = g.standard_normal(n) * 0.05
    tdtype = TORCH_DTYPES[dtype]
    if tdtype.is_floating_point:
        t = torch.from_numpy(x).to(tdtype)
        if n and draw(st.booleans()):
            specials = draw(st.lists(st.sampled_from([math.nan, math.inf, -math.inf]), min_size=1, max_size=4))
            idx = g.integers(0, n, len(specials))
            t[torch.from_numpy(idx)] = torch.tensor(specials, dtype=tdtype)
    else:
        info = torch.iinfo(tdtype)
        t = torch.from_numpy(np.clip(np.round(x * 100), info.min, info.max)).to(tdtype)
    return t


@given(tensors(), st.sampled_from([1 << 20, 4096, 600]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_statistic_matches_numpy(t, chunk):
    s = stats_of({"w": t}, chunk_bytes=chunk, threads=2)["w"]
    check(s, t)


@pytest.mark.parametrize("dtype", sorted(TORCH_DTYPES))
def test_each_dtype_with_nan_inf_and_zeros(dtype):
    tdtype = TORCH_DTYPES[dtype]
    g = torch.Generator().manual_seed(1)
    if tdtype.is_floating_point:
        t = torch.randn(3000, generator=g).to(tdtype)
        t[[3, 10]] = math.nan
        t[20] = math.inf
        t[21] = -math.inf
        t[100:130] = 0
    else:
        t = torch.randint(-5 if tdtype != torch.uint8 else 0, 6, (3000,), generator=g).to(tdtype)
    check(stats_of({"w": t}, chunk_bytes=1000)["w"], t)



@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bool])
def test_eight_bit_floats_and_bool(dtype):
    # these go through the value-count table too: every pattern, NaN and e5m2's Inf included
    g = torch.Generator().manual_seed(2)
    if dtype == torch.bool:
        t = torch.rand(3001, generator=g) < 0.3
    else:
        t = (torch.randn(3001, generator=g) * 4).to(dtype)
        t[:5] = torch.tensor([math.nan, 0.0, -0.0, 448.0 if dtype == torch.float8_e4m3fn else math.inf, 2.0**-9])
    ref = t.to(torch.float64) if dtype != torch.bool else t.to(torch.int64)
    check(stats_of({"w": t}, chunk_bytes=700)["w"], ref)

def test_edge_shapes():
    cases = {"empty": torch.zeros(0, 3), "single": torch.tensor([2.5]), "zeros": torch.zeros(4, 4),
             "all_nan": torch.full((5,), math.nan), "scalar": torch.tensor(7.0)}
    got = stats_of(cases)
    for name, t in cases.items():
        check(got[name], t)
    assert got["single"].std == 0.0 and got["scalar"].mean == 7.0


@pytest.mark.parametrize("eps", [1e-6, 0.1, 2.0**-20, 0.0, 1e-50, 1e300])
def test_small_count_is_exact_at_the_eps_boundary(eps):
    # float32 values on both sides of eps, which float32 itself cannot always represent
    near = np.float32(eps) if eps < 3e38 else np.float32(3e38)
    around = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    x = np.array(around * 20 + [0.0, -0.0, 1e-45, -1e-45, 0.5, -0.5] * 10, dtype=np.float32)
    x[::2] *= -1
    t = torch.from_numpy(x)
    check(stats_of({"w": t}, eps=eps)["w"], t, eps=eps)


@pytest.mark.parametrize("centre", [0.0, 3.0, 2.0**24 * 2.0**-12, 5e6, -7e5, 1e30])
def test_histogram_exact_far_from_zero(centre):
    # narrow spreads far from zero put the grid's base near or past 2**24 bins from zero
    g = np.random.default_rng(3)
    x = (centre + g.standard_normal(40_000) * max(abs(centre), 1.0) * 1e-4).astype(np.float32)
    x[:50] = np.float32(centre)
    t = torch.from_numpy(x)
    check(stats_of({"w": t}, chunk_bytes=1 << 14)["w"], t)


def test_float32_sum_would_lose_digits():
    # a 4096x4096-style sum in float32 drifts; the engine accumulates in float64
    x = np.full(1 << 22, 0.1, dtype=np.float32)
    s = stats_of({"w": torch.from_numpy(x)})["w"]
    exact = float(np.float32(0.1))
    assert s.mean == pytest.approx(exact, rel=1e-12)
    running = float(np.cumsum(x, dtype=np.float32)[-1])  # a float32 running sum drifts
    assert abs(running / x.size - exact) > 1e-3 * exact


def test_chunking_and_threads_do_not_change_results():
    t = torch.randn(50_000) * 3 + 1
    t[7] = math.nan
    a = stats_of({"w": t}, chunk_bytes=1 << 24, threads=1)["w"]
    b = stats_of({"w": t}, chunk_bytes=4000, threads=2)["w"]
    assert (a.min, a.max, a.nan, a.zeros, a.hist_counts, a.hist_edges) == (b.min, b.max, b.nan, b.zeros,
                                                                           b.hist_counts, b.hist_edges)
    assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std == pytest.approx(b.std, rel=1e-12)


def test_bfloat16_safetensors_file(tmp_path):
    t = torch.randn(257, 33).to(torch.bfloat16)
    path = tmp_path / "m.safetensors"
    save_file({"w": t}, str(path))
    report = weightkit.stats(path)
    check(report["w"], t)
    assert report["w"].dtype == "bfloat16"


def test_layer_and_model_roll_ups():
    model = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    r = weightkit.stats(model)
    every = np.concatenate([p.detach().numpy().ravel().astype(np.float64) for p in model.parameters()])
    assert r.total.count == every.size
    assert r.total.mean == pytest.approx(every.mean(), rel=1e-9)
    assert r.total.std == pytest.approx(every.std(), rel=1e-9)
    assert r.total.l2_norm == pytest.approx(np.linalg.norm(every), rel=1e-9)
    layer0 = next(g for g in r.layers if g.name == "0")
    w0 = np.concatenate([model[0].weight.detach().numpy().ravel(), model[0].bias.detach().numpy().ravel()])
    assert layer0.kind == "Linear" and layer0.count == w0.size
    assert layer0.std == pytest.approx(w0.astype(np.float64).std(), rel=1e-9)
    assert layer0.absmax == float(np.abs(w0).max())


def test_select_and_json():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    r = weightkit.stats(model, select="*.bias")
    assert [t.name for t in r.tensors] == ["0.bias", "1.bias"]
    d = r.to_dict()
    import json

    assert json.loads(json.dumps(d))["tensors"][0]["name"] == "0.bias"
    only = weightkit.stats(model, select=lambda w: w.kind == "Linear" and w.role == "weight")
    assert [t.name for t in only.tensors] == ["0.weight", "1.weight"]


class _Broken(ReaderBase):
    format = "test"
    description = "broken"

    def tensors(self):
        return [RawTensor("good", "good", (10,), "float32"), RawTensor("bad", "bad", (10,), "float32")]

    def read(self, key):
        if key == "bad":
            raise OSError("disk read error")
        return np.arange(10, dtype=np.float32)


def test_unreadable_tensor_is_reported_and_the_rest_measured():
    r = weightkit.stats(WeightSet(_Broken()))
    assert r["bad"].error and "disk read error" in r["bad"].error
    assert r["good"].error is None and r["good"].max == 9.0
    assert r.total.unreadable == 1


def test_bad_arguments():
    with pytest.raises(weightkit.WeightkitError, match="bins"):
        weightkit.stats(torch.nn.Linear(2, 2), bins=0)
    with pytest.raises(weightkit.WeightkitError, match="eps"):
        weightkit.stats(torch.nn.Linear(2, 2), eps=-1)


@pytest.mark.parametrize("eps", [1e-6, 0.1, 2.0**-20, 0.0, 1e300])
def test_small_count_is_exact_at_the_eps_boundary_bfloat16(eps):
    near = torch.tensor(min(eps, 3e38), dtype=torch.bfloat16).view(torch.int16).item()
    bits = torch.tensor([near - 1, near, near + 1, 0, 1, -32768, 0x3F00] * 30, dtype=torch.int16)
    t = bits.view(torch.bfloat16).clone()
    t[::2] *= -1
    check(stats_of({"w": t}, eps=eps)["w"], t, eps=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int16])
def test_histogram_exact_when_the_range_grows_block_after_block(dtype):
    # one piece of many cache blocks whose spread grows along the tensor: the grid widens
    # inside a single pass of the kernel, with counts still pending for the old grid
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300_000, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 300_000, dtype=torch.float64)
    t = (x * 100).round().clamp(-30000, 30000).to(dtype) if dtype == torch.int16 else x.clamp(-6e4, 6e4).to(dtype)
    check(stats_of({"w": t})["w"], t)


@pytest.mark.parametrize("kind", ["float32", "bfloat16"])
def test_kernel_folds_its_int32_counts_exactly(kind):
    """The int32 counts are folded in every 2**30 elements, which no test can reach: run the
    kernel with a fold after every block (float32) or every 5 elements (8/16-bit table) and
    check the histogram and counts against NumPy on the kernel's own grid."""
    from weightkit.analyses.statistics import _kernel as K
    from weightkit.analyses.statistics.engine import _luts

    g = np.random.default_rng(5)
    n = 5 * K.BLOCK + 123
    x = (g.standard_normal(n) * 0.05).astype(np.float32)
    x[g.integers(0, n, n // 3)] = 0.0  # runs of one bin
    x[:50] = np.linspace(-3, 3, 50)  # widen the grid after the first counts
    mom, cnt, hist, geo = K.new_accumulator(2048)
    if kind == "float32":
        values = x.astype(np.float64)
        K.process_f32(x, 0.0, 1e-3, mom, cnt, hist, geo, flush_blocks=1)
    else:
        raw = (x.view(np.uint32) >> 16).astype(np.uint16)
        values = (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        K.process_table(raw, _luts()["bfloat16"], 0.0, 1e-3, mom, cnt, hist, geo, tally_max=5)
    lo, w = geo
    expected, _ = np.histogram(values, bins=lo + w * np.arange(hist.size + 1))
    assert hist.tolist() == expected.tolist() and hist.sum() == n
    assert cnt[K.ZERO] == (values == 0).sum() and cnt[K.SMALL] == (np.abs(values) < 1e-3).sum()
    assert mom[K.S] == pytest.approx(values.sum(), rel=1e-9, abs=1e-9)
    assert (mom[K.MIN], mom[K.MAX]) == (values.min(), values.max())


@pytest.mark.parametrize("big", ["big", "z_big"])  # the file's last tensor: "norm" (read), "z_big" (mapped)
def test_a_file_truncated_after_it_was_opened(tmp_path, big):
    """Big pieces are mapped by the worker threads, small ones read by the caller: either way a
    tensor whose bytes are gone is reported in one line and the others are still measured."""
    import json
    import struct

    path = tmp_path / "m.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({big: torch.randn(1024, 1024, generator=g), "bias": torch.randn(64, generator=g),
               "norm": torch.randn(64, generator=g)}, str(path))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = {k: v for k, v in json.loads(raw[8 : 8 + n]).items() if k != "__metadata__"}
    last = max(header, key=lambda k: header[k]["data_offsets"][1])
    assert last == ("norm" if big == "big" else "z_big")
    ws = weightkit.open(path)
    with open(path, "r+b") as f:
        f.truncate(len(raw) - 8)
    r = weightkit.stats(ws)
    assert "truncated" in r[last].error and "\n" not in r[last].error
    for name in set(header) - {last}:
        assert r[name].error is None and r[name].count == header[name]["shape"][0] * (
            header[name]["shape"][1] if len(header[name]["shape"]) > 1 else 1)
    assert r.total.unreadable == 1
