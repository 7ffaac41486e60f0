"""Round-two malicious corpus (issue 15): the pickle machine: operands parsed as CPython parses them, npy headers as numpy parses them.

Each variant is built with the helpers of ``_malicious`` and added to its ``VARIANTS``;
``EXPECTED`` names the rules each variant must raise, on top of the verdict ``malicious``.
A stricter parser than the loader's stopped at the operand and called these ``unreadable``.
"""

from __future__ import annotations

import pickle
import struct

from _malicious import MAGIC, Variant, g, legacy, s0, system, touch


def _p0_system(m: str) -> bytes:  # os.system("touch m") in protocol 0 opcodes
    return g("os", "system") + b"(" + s0(touch(m)) + b"tR."


def _operand_then(operand: bytes):
    """``operand`` pushed and popped, then the payload: the walk must get past the operand."""
    return lambda m: operand + b"0" + _p0_system(m)


def _legacy_hex_magic(m: str) -> bytes:
    """A legacy ``torch.save`` file whose magic number is a protocol-0 LONG in hex: torch.load
    compares the value, which ``load_long`` computes with ``int(s, 0)``."""
    plain = legacy(pickle.dumps({"w": 1}, protocol=2))
    magic = pickle.dumps(MAGIC, protocol=2)
    assert plain.startswith(magic)
    main = b"\x80\x02" + system(m) + b"."
    rest = plain[len(magic):].replace(pickle.dumps({"w": 1}, protocol=2), main)
    return f"L{MAGIC:#x}L\n.".encode() + rest


def _npy_object_header(shape: str):
    """An object array whose header numpy reads only after dropping Python 2 ``L`` suffixes by
    tokens (``_filter_header``), which a regex over the text missed."""
    def build(m: str) -> bytes:
        header = "{'descr': '|O', 'fortran_order': False, 'shape': %s, }" % shape
        h = (header + " " * (63 - (10 + len(header)) % 64) + "\n").encode("latin-1")
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\x80\x02" + system(m) + b"."
    return build


def variants() -> list[Variant]:
    V = Variant
    return [
        V("int_hex_operand", "INT 0x1 (load_int: strtol in base 0) before the payload", "int_hex.pkl",
          _operand_then(b"I0x1\n"), "pickle"),
        V("int_nul_operand", "INT 1\\0junk (the C unpickler's copy of the line ends at the NUL)", "int_nul.pkl",
          _operand_then(b"I1\x00junk\n"), "pickle"),
        V("long_hex_operand", "LONG 0x10L (load_long: trailing L dropped, int(s, 0))", "long_hex.pkl",
          _operand_then(b"L0x10L\n"), "pickle"),
        V("float_overflow_operand", "FLOAT 1e500: pure-Python pickle reads inf, the C unpickler refuses",
          "float_inf.pkl", _operand_then(b"F1e500\n"), "pypickle"),
        V("legacy_hex_magic", "legacy torch file whose magic number is a hex LONG", "legacy_hex.pt",
          _legacy_hex_magic, "torch"),
        V("npy_py2_long_spaced", ".npy object array, shape '(1 L,)' (numpy drops the L token)", "py2_spaced.npy",
          _npy_object_header("(1 L,)"), "numpy"),
        V("npy_py2_long_twice", ".npy object array, shape '(1L L,)' (numpy's filter drops both)",
          "py2_twice.npy", _npy_object_header("(1L L,)"), "numpy"),
        V("npy_py2_long_hex", ".npy object array, shape '(0x1FL,)'", "py2_hex.npy",
          _npy_object_header("(0x1FL,)"), "numpy"),
    ]


EXPECTED: dict[str, set[str]] = {
    "int_hex_operand": {"global-critical"},
    "int_nul_operand": {"global-critical"},
    "long_hex_operand": {"global-critical"},
    "float_overflow_operand": {"global-critical"},
    "legacy_hex_magic": {"global-critical"},
    "npy_py2_long_spaced": {"numpy-object-array", "global-critical"},
    "npy_py2_long_twice": {"numpy-object-array", "global-critical"},
    "npy_py2_long_hex": {"numpy-object-array", "global-critical"},
}
