"""Round-two malicious corpus (issue 15): zip structure: central directories that loaders read differently, pickles under unusual member names, Keras configs in zips.

Each variant is built with the helpers of ``_malicious`` and added to its ``VARIANTS``;
``EXPECTED`` names the rules each variant must raise, on top of the verdict ``malicious``.
"""

from __future__ import annotations

from _malicious import Variant

EXPECTED: dict[str, set[str]] = {}


def variants() -> list[Variant]:
    return []
