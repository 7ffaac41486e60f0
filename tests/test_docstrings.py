"""The runnable examples in public docstrings are part of the documentation: run them."""

import doctest
import importlib

import pytest

MODULES = [
    "weightkit",
    "weightkit._api",
    "weightkit.layers",
    "weightkit.summary",
    "weightkit.weightset",
    "weightkit.sources._base",
    "weightkit.render._format",
    "weightkit.statistics",
    "weightkit.doctor",
    "weightkit.select",
    "weightkit.plot.charts",
    "weightkit.plot.filters",
    "weightkit.importance",
    "weightkit.diff",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
