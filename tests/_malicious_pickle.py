"""Round-two malicious corpus (issue 15): the pickle machine: operands parsed as CPython parses them, npy headers as numpy parses them.

Each variant is built with the helpers of ``_malicious`` and added to its ``VARIANTS``;
``EXPECTED`` names the rules each variant must raise, on top of the verdict ``malicious``.
"""

from __future__ import annotations

from _malicious import Variant

EXPECTED: dict[str, set[str]] = {}


def variants() -> list[Variant]:
    return []
