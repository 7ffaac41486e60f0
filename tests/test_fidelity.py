"""A fast sample of the fidelity harness (``bench/fidelity.py``, ``make fidelity``): every
``torch.nn`` layer with weights and a few Keras 3 models, saved to files and opened again; the
kind and output axis weightkit infers for each tensor of the *file* must match the class of the
live module that owns it (no wrong answers; unknown only where a file cannot tell)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fidelity  # noqa: E402


def test_torch_nn_and_keras_files_match_their_live_modules():
    tally, wrongs = fidelity.measure(quick=True, parts=("torch", "keras"))
    total = sum((t for t in tally.values()), start=fidelity.collections.Counter())
    assert wrongs == []
    assert total["unknown"] == 0 and total["right"] > 200
    assert total["axis_right"] == total["axis_defined"] > 80
    assert {"torch.nn rnn", "torch.nn norms", "keras layers (weights.h5)", "keras embedding (keras)"} <= set(tally)
