"""The malicious corpus (tests/_malicious.py): every variant is flagged by ``weightkit.scan``,
scanning runs none of them, and the payloads are real (the loaders they target do run them)."""

import os
import subprocess
import sys
import textwrap

import pytest

from _malicious import ROUND_TWO_EXPECTED, VARIANTS, build_corpus
from weightkit.scanner import scan

# rules that must appear for a variant, on top of a non-safe verdict
EXPECTED = {
    "os_system_p0": {"global-critical"},
    "dotted_eval_call": {"global-critical"},
    "pathlib_os_alias": {"global-critical"},
    "pathlib_write_text": {"global-critical"},
    "importlib_import_module": {"global-critical", "call-computed"},
    "marshal_function_type": {"global-critical", "call-computed"},
    "build_setattr_memo": {"global-mutated"},
    "stack_global_memo": {"global-critical"},
    "stack_global_computed": {"global-unresolved"},
    "stack_global_bytes": {"global-unresolved"},
    "ext_code": {"global-unresolved"},
    "frame_overrun": {"frame-mismatch"},
    "frame_straddle": {"frame-mismatch"},
    "frame_past_stop": {"frame-mismatch", "trailing-data"},
    "payload_then_corrupt": {"global-critical", "pickle-error"},
    "payload_then_truncated": {"global-critical", "pickle-truncated"},
    "second_pickle_after_stop": {"global-critical", "trailing-data"},
    "zip_prepended_bytes": {"global-critical", "polyglot"},
    "zip_duplicate_member": {"global-critical", "zip-duplicate"},
    "zip_hidden_entry": {"global-critical", "polyglot"},
    "pickle_zip_polyglot": {"global-critical", "polyglot"},
    "npy_object_array": {"numpy-object-array", "global-critical"},
    "npz_object_array": {"numpy-object-array", "global-critical"},
    "keras_lambda": {"keras-lambda"},
    "h5_lambda": {"keras-lambda"},
    "keras_function_os_system": {"global-critical"},
    **ROUND_TWO_EXPECTED,
}
# the global a variant must be caught importing (judged on the whole dotted path)
EXPECTED_GLOBAL = {
    "py2_builtin_eval": "builtins.eval",
    "dotted_eval_call": "builtins.eval.__call__",
    "dotted_os_system_global": "os.system.__call__",
    "pathlib_os_alias": "pathlib.os.system",
    "pkgutil_resolve_name": "pkgutil.resolve_name",
    "dunder_import": "builtins.__import__",
    "runpy_run_code": "runpy._run_code",
    "timeit_setup": "timeit.timeit",
    "cprofile_run": "cProfile.run",
    "numpy_testing_runstring": "numpy.testing._private.utils.runstring",
    "torch_load_path": "torch.load",
    "torch_serialization_load": "torch.serialization.load",
    "torch_load_from_bytes": "torch.storage._load_from_bytes",
    "nested_pickle_loads": "pickle.loads",
    "operator_methodcaller": "operator.methodcaller",
    "newobj_ex_popen": "subprocess.Popen",
    "keras_function_os_system": "os.system",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    markers = tmp_path_factory.mktemp("markers")
    return build_corpus(tmp_path_factory.mktemp("corpus"), markers), markers


def test_corpus_covers_the_issue():
    names = {v.name for v in VARIANTS}
    assert len(VARIANTS) >= 40 and len(names) == len(VARIANTS)
    assert set(EXPECTED) <= names and set(EXPECTED_GLOBAL) <= names
    protocols = {"p0", "p1", "p2", "p3", "p4", "p5"}
    assert all(any(p in n for n in names) for p in protocols)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_variant_is_flagged(corpus, variant):
    files, markers = corpus
    report = scan(files[variant.name])
    assert report.verdict == "malicious", report.to_dict()
    rules = {f.rule for f in report.findings}
    assert EXPECTED.get(variant.name, set()) <= rules, rules
    if variant.name in EXPECTED_GLOBAL:
        flagged = {f.global_name for f in report.findings if f.severity == "critical"}
        assert EXPECTED_GLOBAL[variant.name] in flagged, flagged
    assert not any(markers.iterdir())


def test_nested_payloads_are_scanned(corpus):
    files, _ = corpus
    for name in ("nested_pickle_loads", "nested_loads_codecs_p2", "torch_load_from_bytes"):
        nested = [f for f in scan(files[name]).findings if f.member and ">" in f.member]
        assert any(f.global_name == "os.system" for f in nested), (name, nested)


def test_containers_report_where(corpus):
    files, _ = corpus
    r = scan(files["torch_zip_extra_pkl"])
    assert any(f.member == "archive/extra/evil.pkl" and f.global_name == "os.system" for f in r.findings)
    assert scan(files["torch_zip_renamed_folder"]).findings[0].member == "innocent_name/data.pkl"
    assert scan(files["legacy_torch_main"]).format == "torch-legacy"
    assert scan(files["legacy_tar_pickle"]).format == "torch-tar"
    nested = scan(files["nested_zip"])
    assert any(f.member == "models/inner.pt!archive/data.pkl" for f in nested.findings)


def test_scanning_everything_runs_nothing(corpus, tmp_path):
    files, markers = corpus
    cwd = os.getcwd()
    os.chdir(tmp_path)  # payloads with relative paths would land here
    try:
        verdicts = [scan(p).verdict for p in files.values()]
        scan(next(iter(files.values())).parent)  # the whole corpus directory at once
    finally:
        os.chdir(cwd)
    assert verdicts.count("malicious") == len(VARIANTS)
    assert list(markers.iterdir()) == [] and list(tmp_path.iterdir()) == []


LOADER = textwrap.dedent("""
    import contextlib, io, pickle, sys, warnings
    warnings.simplefilter("ignore")
    for arg in sys.argv[1:]:
        kind, path = arg.split("=", 1)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                if kind == "pickle":
                    pickle.load(open(path, "rb"))
                elif kind == "pypickle":
                    pickle._Unpickler(open(path, "rb")).load()
                elif kind == "torch":
                    import torch
                    torch.load(path, weights_only=False)
                elif kind == "numpy":
                    import numpy as np
                    r = np.load(path, allow_pickle=True)
                    [r[k] for k in r.files] if hasattr(r, "files") else None
                elif kind == "keras":
                    import os
                    os.environ["KERAS_BACKEND"] = "torch"
                    import keras
                    keras.models.load_model(path, safe_mode=False)
            except Exception:
                pass
""")


def test_payloads_are_live(tmp_path):
    """The corpus is not a straw man: the loaders it targets really run the payloads."""
    live = [v for v in VARIANTS if v.live]
    files = build_corpus(tmp_path / "corpus", tmp_path / "markers")
    args = [f"{v.live}={files[v.name]}" for v in live]
    subprocess.run([sys.executable, "-c", LOADER, *args], cwd=tmp_path, timeout=120, capture_output=True)
    ran = {p.name for p in (tmp_path / "markers").iterdir()}
    assert len(live) >= 30
    assert ran == {v.name for v in live}
