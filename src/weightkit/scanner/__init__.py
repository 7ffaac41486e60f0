r"""Static scanner for weight files: tells whether loading a file would run code, without
importing or executing anything from it.

Pickles are walked opcode by opcode on a model of the pickle machine; every global they
import is judged by an allow-list of tensor and container rebuilders. Containers are opened
the way loaders open them (PyTorch zip and legacy files, tar checkpoints, raw pickles,
``.npy``/``.npz``, nested archives, ``.keras``/``.h5`` configs, safetensors headers).
Tensor bytes are never read, so scanning a 1 GB checkpoint takes milliseconds.

Verdicts: ``safe`` (only allow-listed globals), ``needs-code`` (imports classes that are not
on the allow-list, e.g. a whole pickled model), ``unreadable`` (damaged, truncated or unknown:
cannot be judged), ``malicious`` (a code-execution gadget or an evasion trick).

Example:
    >>> import os, tempfile, weightkit
    >>> path = os.path.join(tempfile.mkdtemp(), "evil.pkl")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"cos\nsystem\n(S'touch MARKER'\ntR.")
    >>> report = weightkit.scan(path)
    >>> report.verdict, report.findings[0].global_name
    ('malicious', 'os.system')
    >>> os.path.exists("MARKER")
    False
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path
from typing import Iterable

from weightkit.errors import SourceNotFoundError, WeightkitError
from weightkit.formats.shard_index import index_shards, looks_like_index
from weightkit.formats.special import open_regular, refuse_special, special_kind
from weightkit.scanner._allowlist import SAFE_GLOBALS
from weightkit.scanner._containers import is_tar_header, scan_blob, scan_json, signatures
from weightkit.scanner.report import RULES, Ctx, Finding, ScanReport

__all__ = ["scan", "scan_file", "scan_bytes", "file_formats", "ScanReport", "Finding", "RULES", "safe_globals"]

_ALLOW_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz",
                    ".safetensors", ".h5", ".hdf5", ".keras", ".zip", ".tar", ".dat", ".model")
_MAX_DIR_FILES = 10_000


def safe_globals() -> list[str]:
    """The allow-list: every ``module.name`` a pickle may import and still be ``safe``."""
    return sorted(SAFE_GLOBALS)


def _check_allow(allow: Iterable[str]) -> frozenset[str]:
    if isinstance(allow, str):
        allow = (allow,)
    out = set()
    for a in allow:
        if not isinstance(a, str) or not _ALLOW_RE.match(a):
            raise WeightkitError(f"--allow {a!r}: expected an exact global such as 'argparse.Namespace' "
                                 "(module and name joined by a dot)")
        out.add(a)
    return frozenset(out)


def scan(path: str | os.PathLike, *, allow: Iterable[str] = ()) -> ScanReport:
    """Scan one file or directory and return its :class:`ScanReport`; never runs its code.

    Args:
        path: a weights file (any format weightkit knows) or a directory (every weights file in it).
        allow: extra globals (``"module.Name"``, matched exactly) to treat as safe. Known
            code-execution gadgets cannot be allowed.

    Raises:
        SourceNotFoundError: the path does not exist.
        UnsupportedFormatError: the path is a FIFO, device or socket (not opened: reading could
            block forever); inside a directory such files are a ``special-file`` finding.
            Damaged or hostile content never raises: it becomes findings (verdict ``unreadable``
            or ``malicious``).

    Example:
        >>> import weightkit, tempfile, os, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
        >>> torch.save({"w": torch.zeros(2)}, p)
        >>> weightkit.scan(p).verdict
        'safe'
    """
    allowed = _check_allow(allow)
    p = Path(path)
    if not p.exists():
        raise SourceNotFoundError(f"{p}: no such file or directory; check the path")
    refuse_special(p)
    ctx = Ctx(allowed)
    if p.is_dir():
        ctx.format = "directory"
        skipped = 0
        files = []
        for f in sorted(p.rglob("*")):
            kind = special_kind(f)
            if kind is not None:
                ctx.add("special-file", f"{kind}, not a regular file: not opened", f.relative_to(p).as_posix())
            elif f.is_file():
                files.append(f)
        if len(files) > _MAX_DIR_FILES:
            ctx.add("limit-exceeded", f"{len(files)} files; only the first {_MAX_DIR_FILES} are scanned")
        for f in files[:_MAX_DIR_FILES]:
            rel = f.relative_to(p).as_posix()
            if f.name.lower().endswith(".json"):  # Keras reads config.json before any weights
                _scan_path(ctx, f, rel, json_config=True)
            elif _weightlike(f):
                _scan_path(ctx, f, rel)
            else:
                skipped += 1
        if skipped:
            ctx.add("skipped", f"{skipped} files that are not weights files (by name and first bytes) were not inspected")
    elif not _shard_index(ctx, p):
        _scan_path(ctx, p, None, json_config=p.name.lower().endswith(".json"))
    return ctx.report(str(path))


def _shard_index(ctx: Ctx, path: Path) -> bool:
    """A shard index (``*.safetensors.index.json``, Keras ``*.weights.json``: JSON, which holds no
    code) is judged by the shards it lists, scanned here; False when ``path`` is not one."""

    try:
        with open_regular(path) as fh:
            if not looks_like_index(fh.read(4096)):
                return False
    except (OSError, WeightkitError):
        return False
    ctx.format = "shard index"
    try:
        files, _ = index_shards(path)
    except WeightkitError as e:
        ctx.add("container-error", str(e).splitlines()[0], None)
        return True
    for f in files:
        _scan_path(ctx, f, f.relative_to(path.parent).as_posix())
    return True


scan_file = scan


def scan_bytes(data: bytes, name: str = "<bytes>", *, allow: Iterable[str] = ()) -> ScanReport:
    """Scan an in-memory file (same rules as :func:`scan`)."""
    ctx = Ctx(_check_allow(allow))
    _guarded(ctx, lambda: scan_blob(ctx, data, None, 0), None)
    return ctx.report(name)


def file_formats(path: str | os.PathLike) -> list[str]:
    """The formats whose signature the file carries (zip, npy, safetensors, h5, torch-tar), by
    the scanner's own checks; a reader refuses a file that is more than one (a polyglot)."""
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return signatures(mm)


def _guarded(ctx: Ctx, fn, member) -> None:
    try:
        fn()
    except RecursionError:
        ctx.add("limit-exceeded", "structure nested too deeply to inspect", member)
    except MemoryError:
        ctx.add("limit-exceeded", "out of memory while inspecting", member)
    except Exception as e:  # fail closed: a scanner bug must never make a file look safe
        ctx.add("container-error", f"cannot be inspected ({type(e).__name__}: {str(e)[:120]})", member)


def _scan_path(ctx: Ctx, path: Path, member, *, json_config: bool = False) -> None:
    """One file; ``json_config``: a ``.json`` file, judged as a Keras config."""
    try:
        fh = open_regular(path)
    except OSError as e:
        ctx.add("container-error", f"cannot be read ({e.strerror})", member)
        return
    except WeightkitError as e:  # swapped for a FIFO or device since it was listed
        ctx.add("special-file", str(e), member)
        return
    with fh:
        if json_config:
            _guarded(ctx, lambda: scan_json(ctx, fh, member, strict=member is None
                                            or path.name.lower() == "config.json"), member)
            return
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            _guarded(ctx, lambda: scan_blob(ctx, b"", member, 0), member)
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            _guarded(ctx, lambda: scan_blob(ctx, mm, member, 0, path=path), member)
        finally:
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the GC will unmap it
                pass


def _weightlike(path: Path) -> bool:
    if path.name.lower().endswith(_WEIGHT_SUFFIXES):
        return True
    try:
        with open_regular(path) as fh:
            head = fh.read(1032)
    except (OSError, WeightkitError):
        return True
    return (head.startswith((b"PK\x03\x04", b"\x93NUMPY")) or b"\x89HDF\r\n\x1a\n" in (head[:8], head[512:520], head[1024:])
            or (len(head) > 1 and head[0] == 0x80 and 1 <= head[1] <= 5) or is_tar_header(head))
