"""README.md is the front door, and every fenced block in it runs here, so it cannot go stale.

The blocks are read from the Markdown fences, never copied into this file, and run once, in
README order, in one temporary directory (later commands read the files earlier ones write):

- a ``$ weightkit ...`` line runs as ``python -m weightkit ...``. The lines the README prints
  under it must appear in its output, in order, compared with every number masked (weights
  come from a seeded random init) and with table rules and spacing ignored; a line the README
  cuts with a trailing ``…`` is a prefix, a ``...``/``…`` line skips output. The exit status
  is 0 unless the README writes ``(exit code N)``. Tables fit the terminal, so the README may
  show what a 100-column terminal prints (its page width) or a pipe (the CLI's 140 columns):
  a command runs again at 140 only when its 100-column output does not match.
- lines before a block's first ``$`` are what the python block above it logged.
- ``make TARGET``: the Makefile has that target (nothing is built).
- a ``python`` block runs statement by statement with ``exec`` in a namespace that
  ``PYTHON_NAMESPACES`` builds from what its prose implies; a bare expression whose comment
  is a Python literal (``w.shape  # (80, 40)``) must evaluate to it.

The files the commands name are built as the README describes each one (``FILES``).
"""

from __future__ import annotations

import ast
import importlib.util
import io
import logging
import os
import re
import shlex
import subprocess
import sys
import tokenize
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COLUMNS = ("100", "140")  # the README's page width; the CLI's own width when its output is a pipe


# ---- reading the README ----------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One fenced block: where its opening fence is (1-based), its info string, its lines."""

    line: int
    info: str
    lines: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.info or 'text'}"


@dataclass
class Command:
    """A ``$`` line of a block: its arguments and what the README prints under it."""

    line: int
    argv: list[str]
    shown: list[str] = field(default_factory=list)
    exit_code: int = 0


def readme_blocks() -> list[Block]:
    """Every fenced block of the README (``` or ~~~ fences, closed by the same fence or longer)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, body, j = opening.group(1), [], i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: the fence opened here is never closed"
        blocks.append(Block(i + 1, opening.group(2).lower(), tuple(body)))
        i = j + 1
    return blocks


_EXIT = re.compile(r"\s*\(exit code (\d+)\)\s*$")


def parse_session(block: Block) -> tuple[list[str], list[Command], list[str]]:
    """``(leading output, weightkit commands, make targets)`` of a shell-session block."""
    leading: list[str] = []
    commands: list[Command] = []
    targets: list[str] = []
    for n, raw in enumerate(block.lines, start=block.line + 1):
        words = shlex.split(raw.removeprefix("$ ") if raw.startswith(("$ ", "make ")) else "", comments=True)
        if words[:1] == ["make"]:
            targets += words[1:]
        elif raw.startswith("$ "):
            assert words[:1] == ["weightkit"], f"README.md:{n}: only `$ weightkit ...` and `make` lines can run: {raw!r}"
            commands.append(Command(n, words[1:]))
        elif commands:
            exit_code = _EXIT.search(raw)
            if exit_code:
                commands[-1].exit_code = int(exit_code.group(1))
            commands[-1].shown.append(_EXIT.sub("", raw))
        else:
            leading.append(raw)
    return leading, commands, targets


# ---- comparing what the README shows with what ran ---------------------------------------------
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
_BOX = re.compile(r"[\u2500-\u257f]")  # table rules and column separators
_ELISIONS = ("...", "…")


def _norm(line: str) -> str:
    return " ".join(_NUMBER.sub("#", _BOX.sub(" ", line)).split())


def missing_line(shown: list[str], output: str) -> str | None:
    """The first README line not found in ``output`` after the one before it; None if all are.

    Output lines are joined with spaces first, so a line the terminal wrapped still matches."""
    text = " " + " ".join(_norm(line) for line in output.splitlines()) + " "
    pos = 0
    for line in shown:
        want = line.rstrip()
        cut = want.endswith(_ELISIONS)
        for mark in _ELISIONS:
            want = want.removesuffix(mark)
        want = _norm(want)
        if not want:
            continue
        found = re.compile(r"(?<=\s)" + re.escape(want) + ("" if cut else r"(?=\s)")).search(text, pos)
        if not found:
            return line
        pos = found.end()
    return None


def _claimed(comment: str | None) -> object:
    """The value a ``# comment`` claims, when it is a Python literal; else ``_NO_CLAIM``."""
    try:
        return ast.literal_eval(comment.lstrip("#").strip()) if comment else _NO_CLAIM
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NO_CLAIM


_NO_CLAIM = object()


def run_python(block: Block, namespace: dict) -> list[str]:
    """Run the block statement by statement; problems with their README line numbers."""
    source = "\n".join(block.lines) + "\n"
    tree = ast.parse(source, filename="README.md")
    ast.increment_lineno(tree, block.line)  # line numbers of tracebacks are README lines
    comments = {block.line + tok.start[0]: tok.string
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            value = eval(compile(ast.Expression(stmt.value), "README.md", "eval"), namespace)
            claim = _claimed(comments.get(stmt.end_lineno))
            if claim is not _NO_CLAIM and value != claim:
                return [f"README.md:{stmt.lineno}: the comment says {claim!r}, the code gives {value!r}"]
        else:
            exec(compile(ast.Module([stmt], type_ignores=[]), "README.md", "exec"), namespace)
    return []


def run_command(cmd: Command, env: dict) -> list[str]:
    """Run one ``$ weightkit`` line at each width in ``COLUMNS`` until its output shows what the README does."""
    where, mismatches = f"README.md:{cmd.line}: `weightkit {shlex.join(cmd.argv)}`", []
    for columns in COLUMNS:
        ran = subprocess.run([sys.executable, "-m", "weightkit", *cmd.argv], capture_output=True, text=True,
                             env={**env, "COLUMNS": columns}, timeout=120)
        if ran.returncode != cmd.exit_code:
            return [f"{where} exited {ran.returncode}, the README implies {cmd.exit_code}:\n{ran.stdout[-2000:]}{ran.stderr[-2000:]}"]
        line = missing_line(cmd.shown, ran.stdout)
        if line is None:
            return []
        mismatches.append(f"at COLUMNS={columns} the README shows {line!r}, not in the output (in order):\n{ran.stdout}")
    return [f"{where}: " + "\n".join(mismatches)]


# ---- what the README's prose says each file and each python block's variables are -------------
def _rnn_checkpoint(work: Path) -> None:
    """``rnn.pt``: a training checkpoint of the demo's sentiment RNN with a 2-layer bidirectional
    ``lstm`` (the summary shows ``weight_ih_l1`` and its reverse) and an Adam that has not stepped."""
    import torch
    from torch import nn

    from weightkit.demo import build_rnn

    model = build_rnn()
    model.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True, bidirectional=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               work / "rnn.pt")


def _cnn_before_and_after(work: Path) -> None:
    """``before.pt`` and ``cnn.pt``: the demo's CNN state dict before and after a few steps."""
    import torch

    from weightkit.demo import build_cnn

    model = build_cnn()
    torch.save(model.state_dict(), work / "before.pt")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        y = torch.randint(0, 10, (8,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32) + y.view(-1, 1, 1, 1) / 5), y).backward()
        opt.step()
    torch.save(model.state_dict(), work / "cnn.pt")


def _evil(work: Path) -> None:
    """``evil.pt``: a ``torch.save`` whose pickle calls ``os.system`` when loaded (``touch``, were it run)."""
    import torch

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {work / 'EVIL_RAN'}",)

    torch.save({"w": torch.zeros(2), "x": Payload()}, work / "evil.pt")


def _whole_model_class_gone(work: Path) -> None:
    """``whole.pt``: ``torch.save(model)`` of a ``Linear(3, 2)`` module whose class cannot be imported
    (its module existed only while saving)."""
    import torch
    from torch import nn

    module = types.ModuleType("wk_readme_gone")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    Net.__module__, Net.__qualname__, module.Net = module.__name__, "Net", Net
    sys.modules[module.__name__] = module
    try:
        torch.save(Net(), work / "whole.pt")
    finally:
        del sys.modules[module.__name__]


def _mnist_keras(work: Path) -> None:
    """``mnist.keras``: a Keras Sequential 784 → Dense(64) → Dense(10), compiled with Adam and
    fitted one step (so the archive holds the optimizer's 10 variables)."""
    import numpy as np

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu", name="dense"),
                              keras.layers.Dense(10, name="dense_1")], name="sequential")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 784), dtype="float32"), rng.integers(0, 10, 8), epochs=1, verbose=0)
    model.save(work / "mnist.keras")


def _edits_namespace() -> dict:
    """"On live models ... every edit": a torch ``model`` with ``backbone``, ``fc1`` and ``fc``, and
    ``w``, a new value for ``fc.weight``."""
    import torch
    from torch import nn

    import weightkit

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            self.fc1 = nn.Linear(16, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc1(self.backbone(x))))

    return {"torch": torch, "weightkit": weightkit, "model": Net(), "w": torch.randn(4, 16)}


def _watch_namespace() -> dict:
    """"Two lines in a plain PyTorch loop", "a 6-layer sigmoid MLP": ``model``, ``opt``, ``loss_fn``
    and ``batches``; 30 batches, as ``runs list`` shows 30 steps."""
    import torch
    from torch import nn

    import weightkit

    layers = [m for _ in range(5) for m in (nn.Linear(32, 32), nn.Sigmoid())]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    batches = [(torch.randn(16, 32), torch.randn(16, 1)) for _ in range(30)]
    return {"torch": torch, "weightkit": weightkit, "model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
            "loss_fn": nn.MSELoss(), "batches": batches}


FILES = {  # files named by README commands -> (what writes them into a directory, module it needs)
    ("rnn.pt",): (_rnn_checkpoint, None),
    ("before.pt", "cnn.pt"): (_cnn_before_and_after, None),
    ("evil.pt",): (_evil, None),
    ("whole.pt",): (_whole_model_class_gone, None),
    ("mnist.keras",): (_mnist_keras, "keras"),
}
PYTHON_NAMESPACES = {  # first line of a python block -> its namespace
    "weightkit.set_weight(model, ": _edits_namespace,
    "with weightkit.watch(model, ": _watch_namespace,
    "import torch, weightkit": dict,  # self-contained
}


def _namespace_for(block: Block):
    matches = [make for first, make in PYTHON_NAMESPACES.items() if block.lines and block.lines[0].startswith(first)]
    assert len(matches) == 1, (f"{block.id}: no namespace in tests/test_readme.py PYTHON_NAMESPACES for the python "
                               f"block starting {block.lines[:1]}; add one that holds what its prose implies")
    return matches[0]


# ---- running the whole README once ---------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> dict[str, list[str] | str]:
    """Build the files, then run every block in README order in one directory: for each block id,
    its problems (empty: it ran as shown), or a string saying why it could not run here."""
    import torch

    work = tmp_path_factory.mktemp("readme")
    missing: dict[str, str] = {}
    torch.manual_seed(0)
    for names, (build, needs) in FILES.items():
        if needs and importlib.util.find_spec(needs) is None:
            missing.update((name, f"{name} needs {needs}, which is not installed") for name in names)
        else:
            build(work)

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    results: dict[str, list[str] | str] = {}
    logged: list[str] = []  # what the last python block logged
    handler, logger = _Records(), logging.getLogger("weightkit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for block in readme_blocks():
            if block.info == "python":
                logger.addHandler(handler)
                handler.messages = logged = []
                try:
                    torch.manual_seed(0)
                    results[block.id] = run_python(block, _namespace_for(block)())
                except Exception:
                    results[block.id] = [traceback.format_exc(limit=-3)]
                finally:
                    logger.removeHandler(handler)
                continue
            leading, commands, _ = parse_session(block)
            problems = []
            if leading and (line := missing_line(leading, "\n".join(logged))):
                problems.append(f"the python block above logged no line like {line!r}; it logged:\n" + "\n".join(logged))
            for cmd in commands:
                if skip := next((missing[a] for a in cmd.argv if a in missing), None):
                    results[block.id] = skip
                    break
                problems += run_command(cmd, env)
            results.setdefault(block.id, problems)
    assert not (work / "EVIL_RAN").exists(), "a README command ran the payload of evil.pt"
    return results


BLOCKS = readme_blocks()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.info == "python" or parse_session(b)[1]], ids=lambda b: b.id)
def test_readme_block_runs_as_shown(readme_run, block):
    outcome = readme_run[block.id]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    assert not outcome, "\n\n".join(outcome)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.info != "python" and parse_session(b)[2]], ids=lambda b: b.id)
def test_readme_make_targets_exist(block):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = {t for m in re.finditer(r"^([\w .-]+?)\s*:(?!=)", makefile, re.M) for t in m.group(1).split()}
    for target in parse_session(block)[2]:
        assert target in targets, f"{block.id}: `make {target}`, but the Makefile has no target {target!r}"


def test_every_readme_block_is_run_or_checked():
    """A block of a kind this file cannot run fails here instead of being skipped quietly."""
    kinds = {"python": 0, "weightkit": 0, "make": 0}
    for block in BLOCKS:
        if block.info == "python":
            _namespace_for(block)
            kinds["python"] += 1
            continue
        assert block.info in ("", "console", "shell", "sh", "bash", "text"), f"{block.id}: no way to run a {block.info!r} block"
        leading, commands, targets = parse_session(block)
        assert commands or targets, f"{block.id}: neither `$ weightkit` nor `make` lines: {block.lines[:3]}"
        kinds["weightkit"] += len(commands)
        kinds["make"] += len(targets)
    assert all(kinds.values()), f"the README lost a kind of block (or this parser broke): {kinds}"
    used = {first for first in PYTHON_NAMESPACES
            if any(b.info == "python" and b.lines and b.lines[0].startswith(first) for b in BLOCKS)}
    assert used == set(PYTHON_NAMESPACES), ("PYTHON_NAMESPACES has entries for blocks the README no longer has: "
                                            f"{set(PYTHON_NAMESPACES) - used}")


def test_the_comparison_is_strict_about_words_and_loose_about_numbers():
    shown = ["weightkit summary rnn.pt  (torch)", "...", "lstm   LSTM*   99.3K", "  weight_ih_l1   256×128   4*hidden …"]
    output = ("weightkit summary rnn.pt  (torch)\n────────\nlstm      LSTM*    12.5K\n"
              "  weight_ih_l1    8×16   4*hidden (i,f,g,o)   float32\n")
    assert missing_line(shown, output) is None
    assert missing_line(["lstm   LSTM   99.3K"], output) == "lstm   LSTM   99.3K"  # LSTM* is not LSTM
    assert missing_line(shown[2:0:-1] + ["weightkit summary rnn.pt  (torch)"], output) is not None  # order counts
    assert missing_line(["4*hidden"], output) is None and missing_line(["4*hid"], output) == "4*hid"
    assert missing_line(["posix runs code, …"], "posix runs\n   │  │ code, reads files") is None  # wrapped
    assert parse_session(Block(1, "", ("$ weightkit scan a.pt  # note", "1 malicious   (exit code 1)")))[1][0].exit_code == 1
