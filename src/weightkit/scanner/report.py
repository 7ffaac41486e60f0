"""Result of a scan: findings with rule ids, and a verdict derived from them.

Every rule has a fixed severity and the verdict it implies. Verdicts rank
``safe < needs-code < unreadable < malicious``; a report's verdict is the worst verdict of its
findings (``safe`` when there are none, or only ``info`` findings).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Finding", "ScanReport", "RULES", "VERDICTS", "SEVERITIES"]
MAX_TOTAL_BYTES = 2 << 30  # all decompressed reads of one scan
MAX_OPS = 20_000_000  # pickle opcodes walked in one scan (about 10 s)

VERDICTS = ("safe", "needs-code", "unreadable", "malicious")
SEVERITIES = ("critical", "warning", "info")

# rule id -> (severity, verdict it implies, what it means)
RULES: dict[str, tuple[str, str, str]] = {
    "global-critical": ("critical", "malicious", "imports a known code-execution gadget"),
    "global-unresolved": ("critical", "malicious",
                          "imports a global that cannot be resolved statically (computed or non-string "
                          "STACK_GLOBAL operands, EXT registry codes)"),
    "call-computed": ("critical", "malicious", "calls an object that is not an imported global"),
    "global-mutated": ("critical", "malicious",
                       "BUILD/SETITEM/APPEND applied to an imported global (setattr gadget)"),
    "frame-mismatch": ("critical", "malicious",
                       "protocol 4 FRAME lengths disagree with the opcodes (loaders differ here)"),
    "polyglot": ("critical", "malicious", "the file is two formats at once, so loaders see different content"),
    "zip-duplicate": ("critical", "malicious", "a zip holds two members with the same name"),
    "zip-ambiguous": ("critical", "malicious",
                      "zip readers (zipfile, miniz in torch.load) find different end records, central directories "
                      "or members, or members overlap, or bytes belong to no listed member"),
    "keras-lambda": ("critical", "malicious", "a Keras Lambda layer: its config holds marshalled bytecode"),
    "tar-link": ("critical", "malicious",
                 "a tar member torch reads is a link, or a link leaves the archive (torch would read a local file)"),
    "hdf5-external": ("critical", "malicious",
                      "an HDF5 object reads outside the file: external storage, virtual dataset, external link, "
                      "object reference"),
    "global-needs-code": ("warning", "needs-code", "imports a class or function that is not on the allow-list"),
    "numpy-object-array": ("warning", "needs-code", "a numpy object array: its data is a pickle"),
    "keras-custom-object": ("warning", "needs-code", "a Keras config names a custom (non-Keras) object"),
    "pickle-error": ("warning", "unreadable", "the pickle cannot be parsed (bad or unknown opcode, stack error)"),
    "pickle-truncated": ("warning", "unreadable", "the pickle ends before STOP"),
    "memo-missing": ("warning", "unreadable", "a memo GET refers to an index never PUT"),
    "trailing-data": ("warning", "unreadable", "bytes follow the pickle's STOP"),
    "container-error": ("warning", "unreadable", "the container (zip, tar, npy, safetensors, HDF5) is damaged"),
    "limit-exceeded": ("warning", "unreadable", "a size, count or depth limit was hit (zip bomb?)"),
    "unknown-format": ("warning", "unreadable", "not a weights format the scanner knows"),
    "special-file": ("warning", "unreadable", "a FIFO, device or socket: not opened (a loader would block or read forever)"),
    "user-allowed": ("info", "safe", "a global allowed by the caller (allow=/--allow)"),
    "skipped": ("info", "safe", "a file or member that holds no code and was not inspected"),
}


@dataclass(frozen=True)
class Finding:
    """One reason for a verdict.

    ``member`` is where inside the container (``archive/data.pkl``, ``config.json``; ``None``
    for the file itself); ``position`` the byte offset of the opcode in that pickle;
    ``global_name`` the ``module.name`` imported; ``ops`` the opcodes applied to it.
    """

    rule: str
    message: str
    member: str | None = None
    position: int | None = None
    global_name: str | None = None
    ops: tuple[str, ...] = ()

    @property
    def severity(self) -> str:
        return RULES[self.rule][0]

    @property
    def verdict(self) -> str:
        return RULES[self.rule][1]

    def to_dict(self) -> dict:
        return {"rule": self.rule, "severity": self.severity, "member": self.member,
                "position": self.position, "global": self.global_name, "ops": list(self.ops),
                "message": self.message}


@dataclass
class ScanReport:
    """The scan of one path: verdict, findings, and every global the pickles import (with counts)."""

    path: str
    format: str = "unknown"
    findings: list[Finding] = field(default_factory=list)
    globals: dict[str, int] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # pickles/configs/headers inspected

    @property
    def verdict(self) -> str:
        worst = 0
        for f in self.findings:
            worst = max(worst, VERDICTS.index(f.verdict))
        return VERDICTS[worst]

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"

    @property
    def needs_code(self) -> list[str]:
        """The non-allow-listed globals a loader would import (``module.Name``)."""
        return sorted({f.global_name for f in self.findings
                       if f.rule == "global-needs-code" and f.global_name})

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (SEVERITIES.index(f.severity), f.member or "",
                                                    f.position if f.position is not None else -1))

    def to_dict(self) -> dict:
        return {"path": self.path, "verdict": self.verdict, "format": self.format,
                "findings": [f.to_dict() for f in self.sorted_findings()],
                "globals": dict(sorted(self.globals.items())), "members": list(self.members)}


class Ctx:
    """Collects the findings of one scan while containers are opened; ``report()`` freezes them."""

    def __init__(self, allow):
        self.allow = frozenset(allow)
        self.findings: list[Finding] = []
        self.globals: Counter = Counter()
        self.members: list[str] = []
        self.format: str | None = None
        self.read = 0
        self.ops_left = MAX_OPS  # pickle opcodes, all pickles of the scan together (nested ones too)
        self.payloads: set[bytes] = set()  # digests of nested payloads already scanned

    def add(self, rule, message, member=None, position=None, global_name=None, ops=()):
        self.findings.append(Finding(rule, message, member, position, global_name, tuple(ops)))

    def kind(self, fmt: str, depth: int):
        if self.format is None and depth == 0:
            self.format = fmt

    def budget(self, n: int, member) -> bool:
        """Count ``n`` decompressed bytes; ``False`` (and a finding) past the per-scan limit."""
        self.read += n
        if self.read > MAX_TOTAL_BYTES:
            self.add("limit-exceeded", f"more than {MAX_TOTAL_BYTES >> 20} MiB decompressed; scan stopped", member)
            return False
        return True

    def report(self, path: str) -> ScanReport:
        # a member every zip reader lists is walked once per view: the same finding, once
        unique: dict[tuple, Finding] = {}
        for f in self.findings:
            unique.setdefault((f.rule, f.member, f.position, f.global_name, f.message), f)
        return ScanReport(path=path, format=self.format or "unknown", findings=list(unique.values()),
                          globals=dict(self.globals), members=self.members)
