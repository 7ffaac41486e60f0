"""The runnable examples in public docstrings are part of the documentation: run them."""

import doctest
import importlib

import pytest

MODULES = [
    "weightkit",
    "weightkit.core.opening",
    "weightkit.layers",
    "weightkit.analyses.summary",
    "weightkit.core.weightset",
    "weightkit.sources._base",
    "weightkit.render._format",
    "weightkit.render.console",
    "weightkit.analyses.statistics",
    "weightkit.analyses.doctor",
    "weightkit.core.selector",
    "weightkit.render.plots.charts",
    "weightkit.render.plots.filters",
    "weightkit.analyses.importance",
    "weightkit.analyses.diff",
    "weightkit._atomic",
    "weightkit.scanner",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
