"""The structure a maintainer can rely on: every module imports as itself, no public name hides a
module, one version number."""

import importlib
import importlib.metadata
import pkgutil
import types

import pytest

import weightkit

MODULES = sorted(m.name for m in pkgutil.walk_packages(weightkit.__path__, "weightkit.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_as_itself_and_its_parent_exposes_it(name):
    module = importlib.import_module(name)
    assert type(module) is types.ModuleType, f"{name} swapped its module class"
    parent, _, last = name.rpartition(".")
    assert getattr(importlib.import_module(parent), last) is module, f"{parent}.{last} is not the module {name}"


def test_no_public_name_is_also_a_module():
    submodules = {m.name for m in pkgutil.iter_modules(weightkit.__path__)}
    assert not submodules & set(weightkit.__all__)
    for name in weightkit.__all__:
        assert hasattr(weightkit, name), name


def test_documented_attributes_exist():
    assert weightkit.analyses.summary.Summary is weightkit.Summary
    assert callable(weightkit.analyses.doctor.rule)
    assert weightkit.make_permanent.__module__ == "weightkit.edits.prune"
    assert weightkit.scan_bytes(b"\x80\x02}q\x00.").verdict == "safe"


def test_one_version_number():
    assert weightkit.__version__ == importlib.metadata.version("weightkit")


def test_every_public_function_is_fully_annotated():
    import inspect

    for name in weightkit.__all__:
        obj = getattr(weightkit, name)
        if inspect.isclass(obj) or not callable(obj):
            continue
        sig = inspect.signature(obj)
        missing = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
        assert not missing, f"weightkit.{name}: parameters without annotation: {missing}"
        assert sig.return_annotation is not inspect.Signature.empty, f"weightkit.{name}: no return annotation"
