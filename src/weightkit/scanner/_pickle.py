"""A static model of the pickle machine: it walks opcodes, runs nothing and imports nothing.

The model follows CPython's C unpickler (``_pickle.c``): one stack with marks and a fence,
the memo (``PUT``/``BINPUT``/``LONG_BINPUT``/``MEMOIZE``/``GET``…, ``MEMOIZE`` keys by the
number of entries), the protocol set by ``PROTO`` (which decides the Python 2 name mapping of
``find_class``), and ``FRAME``\\ s. Opcodes are parsed linearly as the C unpickler does; frame
lengths are checked separately against the opcode boundaries, because pure-Python ``pickle``
reads frames differently, and a pickle on which the two disagree is an evasion attempt.

Values on the model stack are constants (``str``, ``int``, tuples…), imported globals
(:class:`_Global`), results of calls (:class:`_Call`) and opaque containers. That is enough to
resolve ``STACK_GLOBAL`` operands (directly or through the memo), to see ``BUILD`` applied to
an imported object, and to hand constant payloads of nested ``pickle.loads`` back to the
caller for scanning. The walk stops where the real unpickler would fail, reporting everything
seen before the error.

Text operands get the values ``_pickle.c`` computes (:func:`c_int`: ``strtol`` in base 0, so
``I0x1`` and octal ``I010``, the line ending at a NUL; :func:`c_long`, :func:`c_float`,
:func:`c_decimal`), since those values feed the legacy magic-number check and nested-payload
detection; a FLOAT that only pure-Python ``pickle`` reads (``1e500``) does not stop the walk.
Every container carries its nesting depth; past :data:`MAX_NESTING` the walk reports
``limit-exceeded`` (hashing a deep tuple crashes CPython) and goes on looking for payloads.
"""

from __future__ import annotations

import codecs
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from weightkit.scanner._allowlist import NESTED_LOADERS, SAFE_ENCODINGS, critical_reason, fix_imports, judge
from weightkit.scanner.report import MAX_OPS, Finding

__all__ = ["walk", "PickleResult", "OPCODES", "MAX_NESTING", "MAX_OPS", "c_int", "c_long", "c_float", "c_decimal"]

# opcode byte -> name, for every opcode of protocols 0-5
OPCODES = {ord(c) if isinstance(c, str) else c: n for c, n in {
    "(": "MARK", ".": "STOP", "0": "POP", "1": "POP_MARK", "2": "DUP", "F": "FLOAT", "I": "INT",
    "J": "BININT", "K": "BININT1", "L": "LONG", "M": "BININT2", "N": "NONE", "P": "PERSID",
    "Q": "BINPERSID", "R": "REDUCE", "S": "STRING", "T": "BINSTRING", "U": "SHORT_BINSTRING",
    "V": "UNICODE", "X": "BINUNICODE", "a": "APPEND", "b": "BUILD", "c": "GLOBAL", "d": "DICT",
    "}": "EMPTY_DICT", "e": "APPENDS", "g": "GET", "h": "BINGET", "i": "INST", "j": "LONG_BINGET",
    "l": "LIST", "]": "EMPTY_LIST", "o": "OBJ", "p": "PUT", "q": "BINPUT", "r": "LONG_BINPUT",
    "s": "SETITEM", "t": "TUPLE", ")": "EMPTY_TUPLE", "u": "SETITEMS", "G": "BINFLOAT",
    0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1",
    0x86: "TUPLE2", 0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4",
    "B": "BINBYTES", "C": "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8",
    0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX",
    0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}.items()}

_MAX_STR = 4096  # longer strings are kept opaque (they only matter as global names)
# containers nested deeper than this are refused: hashing a tuple recurses in C without a guard,
# so unpickling a ~100,000-deep tuple used as a dict key kills Python with SIGSEGV; real
# checkpoints nest a few dozen levels
MAX_NESTING = 1000
_U8, _U16, _U32, _I32, _U64, _F64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<i", "<Q", ">d"))


# ---- text operands, parsed as _pickle.c parses them ----------------------------------------
# strtol(s, &end, 0) in the C locale: whitespace, a sign, then 0x-hex, 0-octal or decimal
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")
# PyOS_string_to_double: no whitespace, no underscores; inf/infinity/nan in any case
_STRTOD = re.compile(rb"[+-]?(?:(inf(?:inity)?|nan)|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)", re.I)
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _cstr(s: bytes) -> bytes:
    """The line as C string functions see it: the unpickler's copy ends at the first NUL."""
    return s.split(b"\0", 1)[0]


def c_int(s: bytes) -> int | bool:
    """The value of an ``INT`` operand (``s``: the line without its newline), as ``load_int``
    computes it: ``strtol`` in base 0 (so ``0x1f`` and octal ``010``), ``I00``/``I01`` (any two
    characters that strtol reads as 0 or 1) are False/True; then ``int(s, 0)`` as a fallback.

    Raises:
        ValueError: the C unpickler refuses the operand too.
    """
    if not s:
        raise ValueError("empty INT operand")
    m = _STRTOL.match(s)
    stop = m.end() if m else 0  # no digits: strtol's end pointer is the start of the string
    if stop == len(s) or s[stop] == 0:
        x = 0
        if m:
            digits, base = (m[2], 16) if m[2] else (m[3], 8) if m[3] else (m[4], 10)
            x = int(digits, base) * (-1 if m[1] == b"-" else 1)
        if _LONG_MIN <= x <= _LONG_MAX:
            return bool(x) if len(s) == 2 and x in (0, 1) else x
    return int(_cstr(s + b"\n"), 0)  # PyLong_FromString(s, NULL, 0): underscores, 0b/0o, big values


def c_long(s: bytes) -> int:
    """The value of a ``LONG`` operand as ``load_long`` computes it: a trailing ``L`` dropped,
    then ``int(s, 0)``."""
    if not s:
        raise ValueError("empty LONG operand")
    return int(_cstr(s[:-1] if s.endswith(b"L") else s + b"\n"), 0)


def c_float(s: bytes) -> float:
    """The value of a ``FLOAT`` operand as ``load_float`` computes it (``PyOS_string_to_double``:
    no whitespace or underscores, ``inf``/``nan`` allowed, overflow refused)."""
    m = _STRTOD.match(s)
    if not m or (m.end() < len(s) and s[m.end()] != 0):
        raise ValueError("could not convert string to float")
    x = float(m[0])
    if not m[1] and x in (math.inf, -math.inf):
        raise ValueError("value too large to convert to float")
    return x


def _float_either(s: bytes) -> float:
    """A ``FLOAT`` operand that either unpickler reads: pure-Python ``pickle`` calls ``float()``,
    which also takes whitespace, underscores and overflow (``inf``); the walk goes on as far as
    the more lenient loader would."""
    try:
        return c_float(s)
    except ValueError:
        return float(s)


def c_decimal(s: bytes) -> int:
    """A protocol-0 memo index (``GET``/``PUT``): ``PyLong_FromString(s, NULL, 10)``."""
    if not s:
        raise ValueError("empty memo index")
    return int(_cstr(s + b"\n"), 10)


class _Stop(Exception):
    def __init__(self, rule: str, message: str):
        self.rule, self.message = rule, message


@dataclass
class _Record:
    name: str
    status: str
    reason: str
    position: int
    count: int = 0
    ops: set = field(default_factory=set)


class _Global:
    __slots__ = ("rec",)

    def __init__(self, rec):
        self.rec = rec


class _Call:
    __slots__ = ("rec", "value", "depth")

    def __init__(self, rec, value=None, depth=1):
        self.rec, self.value, self.depth = rec, value, depth


class _Bytes:
    """A bytes constant, kept as a range of the input (large payloads are never copied)."""

    __slots__ = ("start", "stop", "py2str")

    def __init__(self, start, stop, py2str=False):
        self.start, self.stop, self.py2str = start, stop, py2str


class _Opaque:
    __slots__ = ("kind", "depth")

    def __init__(self, kind, depth=1):
        self.kind, self.depth = kind, depth


class _Tuple(tuple):
    """A tuple that holds containers, with its nesting ``depth`` (a plain tuple has depth 1)."""

    depth: int


_NESTED = frozenset((tuple, _Tuple, _Opaque, _Call))  # model values that are containers (depth >= 1)


@dataclass
class PickleResult:
    """What one walk saw: where it ended, whether it reached STOP, the top value at STOP."""

    start: int
    end: int
    ok: bool
    value: Any
    findings: list[Finding]
    globals: Counter
    error: str | None = None
    ops: int = 0  # opcodes walked


def walk(data, start: int = 0, end: int | None = None, *, base: int = 0, member: str | None = None,
         allow=frozenset(), on_nested: Callable[[bytes, int, str], None] | None = None,
         max_ops: int = MAX_OPS) -> PickleResult:
    """Walk one pickle in ``data[start:end]`` (bytes or mmap) up to its STOP.

    Finding positions are ``offset - base``. ``on_nested(payload, position, loader)`` is called
    for a constant bytes argument handed to a deserialiser such as ``pickle.loads``.
    """
    return _Machine(data, start, len(data) if end is None else end, base, member,
                    frozenset(allow), on_nested, max_ops).run()


class _Machine:
    def __init__(self, data, start, end, base, member, allow, on_nested, max_ops):
        self.data, self.start, self.end, self.base = data, start, end, base
        self.member, self.allow, self.on_nested, self.max_ops = member, allow, on_nested, max_ops
        self.records: dict[str, _Record] = {}
        self.findings: list[Finding] = []
        self.globals: Counter = Counter()
        self.proto = 0
        self.op_pos = start
        self.ops = 0
        self.too_deep = False
        self.handed: set[tuple[int, int]] = set()  # nested payloads already handed to on_nested

    # ---- findings -----------------------------------------------------------------------
    def add(self, rule, message, global_name=None, ops=()):
        self.findings.append(Finding(rule, message, self.member, self.op_pos - self.base, global_name, tuple(ops)))

    def global_ref(self, module: str, name: str, op: str) -> _Global:
        m, n = fix_imports(module, name, self.proto)
        path = f"{m}.{n}"
        status, reason = judge(m, n, self.allow)
        raw = f"{module}.{name}"
        if raw != path and status != "critical":  # a loader without fix_imports would see the raw name
            r2 = critical_reason(raw)
            if r2:
                status, reason = "critical", f"{r2} (as written: {raw})"
        rec = self.records.get(path)
        if rec is None:
            rec = self.records[path] = _Record(path, status, reason, self.op_pos - self.base)
        rec.count += 1
        self.globals[path] += 1
        if op == "INST":
            rec.ops.add("INST")
        return _Global(rec)

    def unresolved(self, why: str) -> _Global:
        self.add("global-unresolved", f"global cannot be resolved statically: {why}")
        return _Global(_Record("?", "critical", why, self.op_pos - self.base))

    # ---- values -------------------------------------------------------------------------
    def bytes_of(self, v) -> bytes | None:
        if isinstance(v, _Bytes):
            return bytes(self.data[v.start:v.stop])
        if isinstance(v, _Call) and isinstance(v.value, bytes):
            return v.value
        return None

    def as_str(self, v) -> str | None:
        if isinstance(v, str):
            return v
        if isinstance(v, _Bytes) and v.py2str and v.stop - v.start <= _MAX_STR:
            raw = bytes(self.data[v.start:v.stop])
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        return None

    def nest(self, items) -> int:
        """Depth of a container built from ``items``; past :data:`MAX_NESTING` a finding (once)."""
        d = 0
        for v in items:  # a loop, not max(map()): this runs for every container of the pickle
            t = type(v)
            if t in _NESTED:
                e = 1 if t is tuple else v.depth
                if e > d:
                    d = e
        d += 1
        if d > MAX_NESTING and not self.too_deep:
            self.too_deep = True
            self.add("limit-exceeded", f"containers nested more than {MAX_NESTING} levels deep; unpickling "
                     "them can crash Python (hashing a deep tuple recurses in C)")
        return d

    def tuple_of(self, items):
        d = self.nest(items)
        if d == 1:
            return tuple(items)
        t = _Tuple(items)
        t.depth = d
        return t

    def grow(self, target, items) -> None:
        """Items added to a container (APPEND, SETITEM, BUILD…) deepen it."""
        if type(target) is _Opaque or type(target) is _Call:
            target.depth = max(target.depth, self.nest(items))

    def call(self, func, args, op: str, kwargs=None):
        depth = self.nest((args,) if kwargs is None else (args, kwargs))
        if not isinstance(func, _Global):
            self.add("call-computed", f"{op} on {_kind(func)}, not on an imported global")
            return _Call(None, None, depth)
        rec = func.rec
        rec.ops.add(op)
        value = None
        if rec.name == "_codecs.encode" and isinstance(args, tuple) and args and isinstance(args[0], str):
            enc = args[1] if len(args) > 1 else "utf-8"
            if isinstance(enc, str) and enc.lower() in SAFE_ENCODINGS:
                try:
                    value = args[0].encode(enc)
                except UnicodeEncodeError:
                    value = None
        if rec.name in NESTED_LOADERS and self.on_nested and isinstance(args, tuple) and args:
            arg = args[0]
            key = (arg.start, arg.stop) if isinstance(arg, _Bytes) else None
            if key is None or key not in self.handed:  # a memoised payload called again is not copied again
                payload = self.bytes_of(arg)
                if payload is not None:
                    if key is not None:
                        self.handed.add(key)
                    self.on_nested(payload, self.op_pos - self.base, rec.name)
        return _Call(rec, value, depth)

    def touch(self, target, op: str):
        if isinstance(target, _Global):
            self.add("global-mutated", f"{op} applied to the imported object {target.rec.name} "
                     "(changes a class or module: setattr gadget)", target.rec.name, (op,))
        elif op == "BUILD" and isinstance(target, _Call) and target.rec is not None:
            target.rec.ops.add(op)

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> PickleResult:
        ok, value, error = False, None, None
        try:
            value = self._loop()
            ok = True
        except _Stop as e:
            self.add(e.rule, e.message)
            error = e.message
        for rec in self.records.values():
            ops = tuple(sorted(rec.ops))
            how = f" ({', '.join(ops)})" if ops else ""
            if rec.status == "user-allowed":
                f = Finding("user-allowed", f"allowed by the caller: {rec.name}{how}", self.member, rec.position, rec.name, ops)
            elif rec.status == "needs-code":
                f = Finding("global-needs-code", f"needs code: {rec.name}{how}", self.member, rec.position, rec.name, ops)
            elif rec.status == "critical":
                f = Finding("global-critical", f"{rec.name}{how}: {rec.reason}", self.member, rec.position, rec.name, ops)
            else:
                continue
            self.findings.append(f)
        return PickleResult(self.start, self.pos, ok, value, self.findings, self.globals, error, self.ops)

    def _loop(self):  # noqa: C901 - one branch per opcode, as in the unpickler
        data, end = self.data, self.end
        stack: list = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        frame_end = None
        self.pos = pos = self.start
        u8, u16, u32, i32, u64, f64 = _U8, _U16, _U32, _I32, _U64, _F64
        ints = {"BININT1": (u8, 1), "BININT2": (u16, 2), "BININT": (i32, 4)}
        unis = {"SHORT_BINUNICODE": (u8, 1), "BINUNICODE": (u32, 4), "BINUNICODE8": (u64, 8)}
        byts = {"SHORT_BINBYTES": (u8, 1), "BINBYTES": (u32, 4), "BINBYTES8": (u64, 8), "BYTEARRAY8": (u64, 8)}
        exts = {"EXT1": (u8, 1), "EXT2": (u16, 2), "EXT4": (i32, 4)}
        consts = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
        memo_ops = {"BINPUT": (u8, 1), "BINGET": (u8, 1), "LONG_BINPUT": (u32, 4), "LONG_BINGET": (u32, 4),
                    "PUT": (None, 0), "GET": (None, 0)}

        def need(k):
            if k < 0 or self.pos + k > end:
                raise _Stop("pickle-truncated", f"the pickle ends inside {name} (needs {k} bytes)")
            p = self.pos
            self.pos = p + k
            return p

        def line():
            i = data.find(b"\n", self.pos, end)
            if i < 0:
                raise _Stop("pickle-truncated", f"the pickle ends inside the text argument of {name}")
            s = data[self.pos:i]
            self.pos = i + 1
            return bytes(s)

        def text(s: bytes, enc="utf-8"):
            try:
                return s.decode(enc)
            except UnicodeDecodeError:
                raise _Stop("pickle-error", f"{name}: argument is not valid {enc}") from None

        def number(s: bytes, conv: Callable[[bytes], Any] = c_decimal):
            try:
                return conv(s)
            except ValueError:  # also int()'s limit on digits, which the unpickler shares
                raise _Stop("pickle-error", f"{name}: bad number {s[:40]!r}") from None

        def pop():
            if len(stack) <= (marks[-1] if marks else 0):
                raise _Stop("pickle-error", f"{name}: unpickling stack underflow")
            return stack.pop()

        def top(k=1):
            if len(stack) - k < (marks[-1] if marks else 0):
                raise _Stop("pickle-error", f"{name}: unpickling stack underflow")
            return stack[-1]

        def pop_mark():
            if not marks:
                raise _Stop("pickle-error", f"{name}: could not find MARK")
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        def get(idx):
            if idx not in memo:
                raise _Stop("memo-missing", f"{name}: memo index {idx} was never stored")
            stack.append(memo[idx])

        def put(idx):
            if idx < 0:
                raise _Stop("pickle-error", f"{name}: negative memo index")
            memo[idx] = top()

        def string(k, py2=False, uni=False):
            p = need(k)
            if uni:
                if k > _MAX_STR:
                    return _Opaque("str")
                try:
                    return bytes(data[p:p + k]).decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    raise _Stop("pickle-error", f"{name}: invalid UTF-8") from None
            return _Bytes(p, p + k, py2)

        n = 0
        try:  # the opcodes walked are charged to the caller's budget, however the walk ends
            for n in range(1, self.max_ops + 1):  # noqa: B007 - n is read in the finally clause
                pos = self.pos
                if frame_end is not None and pos >= frame_end:
                    if pos > frame_end:
                        self.op_pos = pos
                        self.add("frame-mismatch", f"an opcode crosses the end of its FRAME at byte {frame_end - self.base}")
                    frame_end = None
                if pos >= end:
                    raise _Stop("pickle-truncated", "the pickle ends before STOP")
                self.op_pos = pos
                op = data[pos]
                self.pos = pos + 1
                name = OPCODES.get(op)
                if name is None:
                    raise _Stop("pickle-error", f"unknown opcode {bytes([op])!r}")
                if name in memo_ops:
                    st, k = memo_ops[name]
                    idx = st.unpack_from(data, need(k))[0] if k else number(line())
                    put(idx) if "PUT" in name else get(idx)
                elif name == "MEMOIZE":
                    memo[len(memo)] = top()
                elif name == "MARK":
                    marks.append(len(stack))
                elif name in ("BININT1", "BININT2", "BININT"):
                    st, k = ints[name]
                    stack.append(st.unpack_from(data, need(k))[0])
                elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
                    k = unis[name]
                    stack.append(string(k[0].unpack_from(data, need(k[1]))[0], uni=True))
                elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"):
                    k = byts[name]
                    b = string(k[0].unpack_from(data, need(k[1]))[0])
                    stack.append(b if name != "BYTEARRAY8" else _Opaque("bytearray"))
                elif name in ("SHORT_BINSTRING", "BINSTRING"):
                    k = u8.unpack_from(data, need(1))[0] if name == "SHORT_BINSTRING" else i32.unpack_from(data, need(4))[0]
                    if k < 0:
                        raise _Stop("pickle-error", f"{name}: negative length")
                    stack.append(string(k, py2=True))
                elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    k = int(name[-1])
                    top(k)
                    items = self.tuple_of(stack[-k:])
                    del stack[-k:]
                    stack.append(items)
                elif name == "TUPLE":
                    stack.append(self.tuple_of(pop_mark()))
                elif name == "EMPTY_TUPLE":
                    stack.append(())
                elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"):
                    stack.append(_Opaque(name[6:].lower()))
                elif name in ("DICT", "LIST", "FROZENSET"):
                    items = pop_mark()
                    if name == "DICT" and len(items) % 2:
                        raise _Stop("pickle-error", "odd number of items for DICT")
                    stack.append(_Opaque(name.lower(), self.nest(items)))
                elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                    stack.append(consts[name])
                elif name == "BINFLOAT":
                    stack.append(f64.unpack_from(data, need(8))[0])
                elif name in ("INT", "LONG", "FLOAT"):
                    stack.append(number(line(), c_int if name == "INT" else c_long if name == "LONG" else _float_either))
                elif name in ("LONG1", "LONG4"):
                    k = u8.unpack_from(data, need(1))[0] if name == "LONG1" else i32.unpack_from(data, need(4))[0]
                    if k < 0:
                        raise _Stop("pickle-error", "LONG4: negative length")
                    p = need(k)
                    stack.append(int.from_bytes(data[p:p + k], "little", signed=True) if k <= 64 else _Opaque("int"))
                elif name in ("APPEND", "SETITEM"):
                    items = [pop()]
                    if name == "SETITEM":
                        items.append(pop())
                    self.touch(top(), name)
                    self.grow(stack[-1], items)
                elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                    items = pop_mark()
                    if name == "SETITEMS" and len(items) % 2:
                        raise _Stop("pickle-error", "odd number of items for SETITEMS")
                    self.touch(top(), name)
                    self.grow(stack[-1], items)
                elif name == "BUILD":
                    top(2)
                    state = pop()
                    self.touch(top(), "BUILD")
                    self.grow(stack[-1], (state,))
                elif name == "REDUCE":
                    args = pop()
                    stack.append(self.call(pop(), args, "REDUCE"))
                elif name == "NEWOBJ":
                    args = pop()
                    stack.append(self.call(pop(), args, "NEWOBJ"))
                elif name == "NEWOBJ_EX":
                    kwargs = pop()
                    args = pop()
                    stack.append(self.call(pop(), args, "NEWOBJ_EX", kwargs))
                elif name == "OBJ":
                    items = pop_mark()
                    if not items:
                        raise _Stop("pickle-error", "OBJ: unpickling stack underflow")
                    stack.append(self.call(items[0], self.tuple_of(items[1:]), "OBJ"))
                elif name in ("GLOBAL", "INST"):
                    module = text(line())
                    qual = text(line())
                    g = self.global_ref(module, qual, name)
                    if name == "INST":
                        stack.append(self.call(g, self.tuple_of(pop_mark()), "INST"))
                    else:
                        stack.append(g)
                elif name == "STACK_GLOBAL":
                    qual_v, mod_v = pop(), pop()
                    module, qual = self.as_str(mod_v), self.as_str(qual_v)
                    if module is None or qual is None:
                        bad = [w for w, v in (("module", mod_v), ("name", qual_v)) if self.as_str(v) is None]
                        kinds = ", ".join(f"{w} is {_kind(v)}" for w, v in (("module", mod_v), ("name", qual_v)) if w in bad)
                        stack.append(self.unresolved(f"STACK_GLOBAL operands are not string constants ({kinds})"))
                    else:
                        stack.append(self.global_ref(module, qual, name))
                elif name in ("EXT1", "EXT2", "EXT4"):
                    k = exts[name]
                    code = k[0].unpack_from(data, need(k[1]))[0]
                    stack.append(self.unresolved(f"{name} extension code {code} (copyreg registry, set at run time)"))
                elif name == "PROTO":
                    v = u8.unpack_from(data, need(1))[0]
                    if v > 5:
                        raise _Stop("pickle-error", f"unsupported pickle protocol: {v}")
                    self.proto = v
                elif name == "FRAME":
                    flen = u64.unpack_from(data, need(8))[0]
                    if frame_end is not None:
                        self.add("frame-mismatch", "a FRAME starts before the previous frame ends")
                    if flen > end - self.pos:
                        self.add("frame-mismatch", f"FRAME declares {flen} bytes but only {end - self.pos} remain")
                    frame_end = self.pos + flen
                elif name == "BINPERSID":
                    pid = pop()
                    # torch's legacy persistent_load returns the class of a ('module', cls, file, source) id
                    if isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module" and isinstance(pid[1], _Global):
                        stack.append(pid[1])
                    else:
                        stack.append(_Opaque("persistent"))
                elif name == "PERSID":
                    text(line(), "ascii")
                    stack.append(_Opaque("persistent"))
                elif name == "DUP":
                    stack.append(top())
                elif name == "POP":
                    if marks and marks[-1] == len(stack):
                        marks.pop()
                    else:
                        pop()
                elif name == "POP_MARK":
                    pop_mark()
                elif name == "STRING":
                    s = line()
                    if len(s) < 2 or s[:1] not in (b"'", b'"') or s[-1:] != s[:1]:
                        raise _Stop("pickle-error", "the STRING opcode argument must be quoted")
                    try:
                        raw = codecs.escape_decode(s[1:-1])[0]
                    except ValueError:
                        raise _Stop("pickle-error", "STRING: bad escape") from None
                    stack.append(raw.decode("latin-1") if len(raw) <= _MAX_STR else _Opaque("str"))
                elif name == "UNICODE":
                    s = line()
                    stack.append(text(s, "raw-unicode-escape") if len(s) <= _MAX_STR else _Opaque("str"))
                elif name == "READONLY_BUFFER":
                    top()
                elif name == "NEXT_BUFFER":
                    raise _Stop("pickle-error", "NEXT_BUFFER: out-of-band buffer, which no weights loader supplies")
                elif name == "STOP":
                    value = pop()
                    if frame_end is not None and frame_end != self.pos:
                        self.add("frame-mismatch", "the FRAME " + ("extends past STOP" if frame_end > self.pos
                                                                   else "ends inside the STOP opcode"))
                    return value
            raise _Stop("limit-exceeded", f"opcode budget exhausted after {self.max_ops} opcodes (at most "
                        f"{MAX_OPS} are walked per file, nested pickles included); the rest is not inspected")
        finally:
            self.ops = n


def _kind(v) -> str:
    if isinstance(v, _Global):
        return f"the global {v.rec.name}"
    if isinstance(v, _Call):
        return "a computed value" + (f" (result of {v.rec.name})" if v.rec else "")
    if isinstance(v, _Bytes):
        return "bytes"
    if isinstance(v, _Opaque):
        return f"a {v.kind}"
    return type(v).__name__
