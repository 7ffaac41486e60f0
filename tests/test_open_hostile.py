"""``weightkit.open`` on the malicious corpus (tests/_malicious.py): every file is refused with a
one-line ``WeightkitError``, whatever reader is forced on it, and no payload runs."""

import os

import pytest

import weightkit
from _malicious import VARIANTS, build_corpus
from weightkit.errors import WeightkitError

FILE_FORMATS = ["torch", "pickle", "npz", "npy", "safetensors", "keras", "keras-h5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    markers = tmp_path_factory.mktemp("markers")
    return build_corpus(tmp_path_factory.mktemp("corpus"), markers), markers


@pytest.fixture
def in_tmp(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # payloads with relative paths would land here
    yield tmp_path
    os.chdir(cwd)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_open_refuses_every_variant(corpus, variant, in_tmp):
    files, markers = corpus
    path = files[variant.name]
    with pytest.raises(WeightkitError) as e:
        weightkit.open(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    for fmt in FILE_FORMATS:  # forcing a reader changes nothing
        with pytest.raises(WeightkitError):
            weightkit.open(path, format=fmt)
    assert list(markers.iterdir()) == [] and list(in_tmp.iterdir()) == []


def test_pickle_based_variants_are_refused_for_the_scanners_reason(corpus, in_tmp):
    files, markers = corpus
    refused = {}
    for v in VARIANTS:
        try:
            weightkit.open(files[v.name])
        except WeightkitError as e:
            refused[v.name] = str(e)
    pickles = [v.name for v in VARIANTS if v.filename.endswith((".pkl", ".pt", ".joblib"))]
    by_scanner = [n for n in pickles if ": refused: " in refused[n]]
    assert len(by_scanner) >= len(pickles) - 2, sorted(set(pickles) - set(by_scanner))
    assert "refused: the pickle in archive/data.pkl calls os.system (critical)" in refused["torch_zip"]
    assert list(markers.iterdir()) == []
