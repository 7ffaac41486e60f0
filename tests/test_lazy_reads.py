"""Summary of a checkpoint reads headers, not tensor bytes (checked with the process's read
counter, so the test does not depend on timing)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import weightkit

IO = Path("/proc/self/io")
pytestmark = pytest.mark.skipif(not IO.exists(), reason="needs Linux /proc/self/io")


def _rchar() -> int:
    return next(int(l.split()[1]) for l in IO.read_text().splitlines() if l.startswith("rchar:"))


@pytest.fixture(scope="module")
def big_state_dict():
    return {f"blocks.{i}.weight": torch.ones(1024, 1024) for i in range(16)}  # 64 MiB


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "npz"])
def test_summary_reads_only_metadata(tmp_path, big_state_dict, fmt):
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(big_state_dict, str(path))
    elif fmt == "torch":
        torch.save(big_state_dict, path)
    else:
        path = tmp_path / "model.npz"
        np.savez(path, **{k: v.numpy() for k, v in big_state_dict.items()})
    size = path.stat().st_size
    before = _rchar()
    s = weightkit.summary(path)
    read = _rchar() - before
    assert s.totals.parameters == 16 * 1024 * 1024
    assert read < size / 50, f"summary read {read} bytes of a {size}-byte file"


def test_data_is_read_when_asked(tmp_path, big_state_dict):
    path = tmp_path / "model.safetensors"
    save_file(big_state_dict, str(path))
    ws = weightkit.open(path)
    w = ws["blocks.3.weight"]
    np.testing.assert_array_equal(w.numpy(), big_state_dict["blocks.3.weight"].numpy())
    chunks = list(w.chunks(max_bytes=1 << 20))
    assert len(chunks) == 4 and all(c.nbytes <= 1 << 20 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), big_state_dict["blocks.3.weight"].numpy().ravel())
