"""Display strings of numbers, sizes, shapes and names: the one place they are spelled, for tables,
plots and the HTML report alike (no rich here, so the report needs no terminal library)."""

from __future__ import annotations

import os
import re

# Characters a terminal, a text layout or an XML file would act on rather than show: C0 controls
# (ESC starts CSI/OSC sequences: clear the screen, retitle the window, hyperlinks, OSC 52 writes
# the clipboard; CR rewrites the line, BEL rings), DEL, C1 controls (0x9b is a one-byte CSI,
# 0x9d a one-byte OSC on terminals that honour 8-bit controls), the Unicode line and paragraph
# separators, lone surrogates (a JSON header may spell them; printing one raises
# UnicodeEncodeError), and the bidi embeddings, overrides and isolates U+202A-U+202E,
# U+2066-U+2069 (with the marks U+200E, U+200F, U+061C), which reorder the text around them, so
# that a name can display as another ("Trojan Source", CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(m: re.Match) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def literal(value: object) -> str:
    """``value`` as text that shows itself: every character a terminal or a text layout would act on
    spelled as its Python escape (``"a\\x1b[2J"`` -> ``"a\\\\x1b[2J"``); everything else unchanged.

    Strings from a file or a run store (names, metadata, paths, error messages that quote them)
    pass through here before they are shown; rich markup is kept literal separately, by showing
    them as ``rich.text.Text`` (see :mod:`weightkit.render._format`).

    Example:
        >>> literal("conv\\x1b]52;c;aGk=\\x07.weight"), literal("fc.weight")
        ('conv\\\\x1b]52;c;aGk=\\\\x07.weight', 'fc.weight')
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_visible, text) if _UNSAFE.search(text) else text


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    """``1234567`` -> ``"1.23M"`` (exact below ten thousand)."""
    if n < 10_000:
        return f"{n:,}"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def num(value: float | None) -> str:
    """A statistic in at most four significant digits; ``None`` -> ``"—"``."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def shape_str(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def tristate(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def _cut(name: str, width: int, keep: int | None = None) -> str:
    """``name`` in ``width`` characters with one "…" inside: a third of the head, the rest of the
    tail (a parameter's end says most); with ``keep``, the character at that index stays visible."""
    room = width - 1
    if keep is None or keep < room // 3:
        head = room // 3
    elif len(name) - keep <= room - room // 3:  # the tail reaches back to it
        head = room - (len(name) - keep)
    else:  # two cuts: the head, a window from ``keep`` on, the tail
        head, tail = room // 4, room // 4
        window = room - 1 - head - tail
        return f"{name[:head]}…{name[keep:keep + window]}…{name[len(name) - tail:]}"
    return f"{name[:head]}…{name[len(name) - (room - head):]}"


def cut_names(names, width: int) -> dict[str, str]:
    """What each of ``names`` shows in ``width`` characters: itself when it fits, else cut in the
    middle with "…"; distinct names never show the same text (a cut that would merge two keeps the
    first character where they differ). A name too long for any distinct cut shows whole.

    Example:
        >>> cut = cut_names(["encoder.block_alpha.attention.weight", "encoder.block_beta_.attention.weight"], 24)
        >>> list(cut.values())
        ['encod…alpha.attent…eight', 'encod…beta_.attent…eight']
    """
    width = max(width, 5)
    names = list(dict.fromkeys(names))
    out = {n: n if len(n) <= width else _cut(n, width) for n in names}
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(out[n], []).append(n)
    pending = [g for g in groups.values() if len(g) > 1]
    while pending:
        group = pending.pop()
        keep = len(os.path.commonprefix(group))
        sub: dict[str, list[str]] = {}
        for n in group:
            out[n] = n if len(n) <= width else _cut(n, width, keep)
            sub.setdefault(out[n], []).append(n)
        for g in sub.values():
            if len(g) > 1:
                if len(os.path.commonprefix(g)) <= keep:  # no progress: show them whole
                    out.update((n, n) for n in g)
                else:
                    pending.append(g)
    seen: dict[str, str] = {}
    whole: set[str] = set()
    for n in names:  # a cut that equals another name's text (cut or whole): both show whole
        other = seen.setdefault(out[n], n)
        if other != n:
            whole.update((n, other))
    return {n: n if n in whole else v for n, v in out.items()}
