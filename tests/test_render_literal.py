"""Nothing from a file is interpreted by the terminal, rich or matplotlib: tensor names, metadata,
shard and file names, scanner globals and run-store strings holding rich markup, emoji codes,
ANSI/OSC escape codes, CR, C1 controls, bidi overrides, lone surrogates or mathtext are shown as
literal text by every command (exit code as usual, no traceback, no raw control character in the
output, the name visible with its controls spelled out); and a tensor of shape ``[2**63, 0, 3, 3]``
(no elements, but numpy cannot index it) is simply empty."""

import html
import io
import json
import re
import struct
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app
from weightkit.errors import CorruptFileError
from weightkit.render._format import LiteralTable, shown
from weightkit.render._text import literal
from weightkit.render.console import renderable

# wide enough that no name is folded across lines
ENV = {"COLUMNS": "400"}

HOSTILE = {
    "close": "[/x]",
    "style": "[bold red]x[/]",
    "link": "[link=file:///etc/passwd]x[/link]",
    "emoji": ":smile:",
    "clear": "\x1b[2J",
    "osc8": "\x1b]8;;https:evil.example\x07x\x1b]8;;\x07",  # no slash: file and run names use it too
    "clipboard": "\x1b]52;c;aGk=\x07",
    "cr": "a\rb",
    "c1": "\x9b31m\x9d0;t\x9c",
    "bidi": "\u202eevil\u202c\u2066x\u2069",
    "frac": "$\\frac{1}{0}$",
    "caret": "$x^$",
    "surrogate": "\ud800",
}
# every character a terminal or text layout acts on; "\n" separates the lines of the output
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def cli(*args, codes=(0,)):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    out = result.stdout + result.stderr
    assert result.exit_code in codes, (args, result.exit_code, out[-3000:], result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out
    bad = RAW.search(out)
    assert bad is None, (args, repr(out[max(0, bad.start() - 40):bad.end() + 40]))
    return result


def meta_of(hostile: dict) -> list[str]:
    """The metadata keys and values the hostile safetensors file holds."""
    return [x for key, h in hostile.items() if key != "surrogate" for x in (f"k{h}", f"v{h}")]


def shows(out: str, *names: str) -> None:
    for name in names:
        assert literal(name) in out, (literal(name), out[-3000:])


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    """A safetensors file written by hand."""
    header, blobs, at = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    return path


def f32(*shape, zero=False, seed=0):
    values = np.zeros(shape, np.float32) if zero else np.random.default_rng(seed).standard_normal(shape, np.float32)
    return "F32", shape, values.tobytes()


LAYERS = {key: f"L{key}{h}" for key, h in HOSTILE.items() if key != "surrogate"}  # safetensors refuses those
SURROGATE = f"Lsurrogate{HOSTILE['surrogate']}.weight"  # a pickle can name a tensor so: a torch file
ZERO = f"Z{HOSTILE['clear']}{HOSTILE['close']}{HOSTILE['caret']}"  # an all-zero weight: the doctor quotes it


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("literal")
    tensors = {f"{layer}.weight": f32(6, 5, seed=i) for i, layer in enumerate(LAYERS.values())}
    tensors[f"{ZERO}.weight"] = f32(6, 5, zero=True)
    meta = {f"k{h}": f"v{h}" for key, h in HOSTILE.items() if key != "surrogate"}
    model = write_safetensors(d / "hostile.safetensors", tensors, meta)
    plain = model
    torch.save({SURROGATE: torch.ones(2, 3), "ok.weight": torch.ones(3)}, d / "surrogate.pt")
    big = write_safetensors(d / "big.safetensors", {"conv.weight": ("F32", (2**63, 0, 3, 3), b""),
                                                   "fc.weight": ("F32", (0, 2**63), b""),
                                                   "head.weight": f32(4, 3), "head.bias": f32(4)})
    npy_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808, 0, 3, 3), }"
    npy_header += " " * (63 - (10 + len(npy_header)) % 64) + "\n"
    (d / "big.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(npy_header)) + npy_header.encode())
    return {"dir": d, "model": model, "plain": plain, "big": big, "npy": d / "big.npy", "surrogate": d / "surrogate.pt"}


# ---- the helper --------------------------------------------------------------------------------


def test_literal_spells_out_every_control_and_keeps_the_rest():
    assert literal("a\x1b[2J\x07\r\n\t\x00\x7f\x9b") == "a\\x1b[2J\\x07\\r\\n\\t\\x00\\x7f\\x9b"
    assert literal("\u202eevil\u2066\u2028\ud800") == "\\u202eevil\\u2066\\u2028\\ud800"
    for plain in ("features.0.weight", "[/x] $x^$ :smile:", "é 中文 ‖Δw‖ — …", ""):
        assert literal(plain) == plain
    assert all(RAW.search(literal(chr(c))) is None for c in range(0x3000))


def test_tables_hold_only_literal_text():
    t = LiteralTable("a", "b")
    # rich's Text drops BEL and CR by itself but keeps ESC, which the table spells out
    t.add_row("[/x]\x1b[2J\x07", Text("[bold]\x1b]52;c;aGk=\x07", style="red"))
    con = Console(file=io.StringIO(), width=120, color_system=None, markup=True, emoji=True)
    con.print(shown(t))
    assert "[/x]\\x1b[2J\\x07" in con.file.getvalue() and "[bold]\\x1b]52;c;aGk=" in con.file.getvalue()
    with pytest.raises(TypeError):
        t.add_row(Table(), "x")  # a cell that could hide a markup string
    with pytest.raises(TypeError):
        shown(Table())  # a plain rich Table reads its string cells as markup
    # and no terminal renderer or command builds a plain rich Table
    root = Path(weightkit.__file__).parent
    for path in [*root.glob("render/*.py"), *root.glob("cli/*.py")]:
        if path.name != "_format.py":
            assert not re.search(r"(?<!\w)Table[.(]", path.read_text()), path


def test_renderable_is_literal_on_a_console_with_markup_and_emoji(files):
    # a notebook's console reads markup and emoji codes in strings; the results still show names as they are
    con = Console(file=io.StringIO(), width=400, color_system=None, markup=True, emoji=True)
    ws = weightkit.open(files["model"])
    for result in (weightkit.summary(ws), weightkit.stats(ws), weightkit.doctor(ws), weightkit.scan(files["model"])):
        con.print(renderable(result))
    out = con.file.getvalue()
    assert RAW.search(out) is None
    shows(out, *LAYERS.values(), ZERO)


# ---- every command ----------------------------------------------------------------------------


def test_summary_stats_doctor_show_names_and_metadata_literally(files):
    out = cli("summary", files["model"]).stdout
    shows(out, *LAYERS.values(), *meta_of(HOSTILE))
    shows(cli("summary", files["surrogate"]).stdout, SURROGATE.removesuffix(".weight"))  # layer, then its tensors
    out = cli("stats", files["model"]).stdout
    shows(out, *(f"{layer}.weight" for layer in LAYERS.values()))
    out = cli("doctor", files["model"]).stdout
    assert "all-zero" in out
    shows(out, f"{ZERO}.weight")


def test_json_output_is_exact(files):
    data = json.loads(cli("summary", files["model"], "--json").stdout)
    assert {t["name"] for t in data["tensors"]} == {f"{layer}.weight" for layer in LAYERS.values()} | {f"{ZERO}.weight"}
    assert data["metadata"] == {f"k{h}": f"v{h}" for key, h in HOSTILE.items() if key != "surrogate"}
    stats = json.loads(cli("stats", files["model"], "--json").stdout)
    assert {t["name"] for t in stats["tensors"]} == {t["name"] for t in data["tensors"]}


def test_errors_quoting_file_names_are_one_literal_line(files):
    r = cli("summary", files["model"], "--select", f"L{HOSTILE['clear']}nothing", codes=(2,))
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weightkit: error:") and "\\x1b[2J" in lines[0]
    r = cli("scan", files["dir"] / "missing\x1b]52;c;aGk=\x07\n[/x].pt", codes=(2,))
    assert len(r.stderr.strip().splitlines()) == 1 and "\\x1b]52;c;aGk=\\x07\\n[/x].pt" in r.stderr


def _pickle_importing(module: str, name: str) -> bytes:
    """Protocol 4: module and name as SHORT_BINUNICODE (any characters), STACK_GLOBAL, call it, STOP."""
    def s(x: str) -> bytes:
        b = x.encode("utf-8", "surrogatepass")
        return b"\x8c" + bytes([len(b)]) + b

    return b"\x80\x04" + s(module) + s(name) + b"\x93)R."


def test_scan_shows_globals_and_file_names_literally(files, tmp_path):
    module, name = f"m{HOSTILE['clear']}{HOSTILE['close']}", f"C{HOSTILE['clipboard']}{HOSTILE['bidi']}"
    odd = f"w{IN_NAME}.pkl"  # a directory's findings name the member file
    (tmp_path / odd).write_bytes(_pickle_importing(module, name))
    r = cli("scan", tmp_path, files["model"], codes=(1,))
    shows(r.stdout, module, name, odd)
    reports = json.loads(cli("scan", tmp_path / odd, "--json", codes=(1,)).stdout)
    assert reports[0]["path"] == str(tmp_path / odd) and f"{module}.{name}" in reports[0]["globals"]


def test_verify_quantize_prune_convert_show_names_literally(files, tmp_path):
    out = tmp_path / "out.safetensors"
    r = cli("convert", files["surrogate"], out, codes=(2,))
    assert len(r.stderr.splitlines()) == 1 and "\\ud800.weight' is not valid Unicode" in r.stderr
    r = cli("convert", files["plain"], out)
    assert "wrote" in r.stdout
    raw = bytearray(out.read_bytes())
    raw[-1] ^= 0xFF  # the last tensor's last byte
    out.write_bytes(bytes(raw))
    mismatched = json.loads(cli("verify", out, "--json", codes=(1,)).stdout)["mismatched"]
    r = cli("verify", out, codes=(1,))
    assert mismatched and "MISMATCH" in r.stdout
    shows(r.stdout, *mismatched)
    names = [f"{layer}.weight" for layer in LAYERS.values()]
    shows(cli("quantize-error", files["model"]).stdout, *names)
    shows(cli("prune", files["plain"], tmp_path / "p.safetensors", "-a", "0.5").stdout,
          *(n for n in names if "\ud800" not in n))


def test_report_and_plots_draw_names_as_plain_text(files, tmp_path):
    page = tmp_path / "r.html"
    cli("report", files["model"], "-o", page)
    text = page.read_text(encoding="utf-8")
    assert RAW.search(text.replace("\n", "")) is None
    for layer in LAYERS.values():
        assert html.escape(literal(f"{layer}.weight")) in text
    for kind in ("hist", "heatmap", "norms"):
        pic = tmp_path / f"{kind}.svg"
        r = cli("plot", kind, files["model"], "-o", pic, *(("--select", "Lcaret*") if kind == "heatmap" else ()))
        assert r.stderr == ""  # no warning about a glyph (a control character) missing from the font
        xml.dom.minidom.parse(str(pic))  # valid XML: no control character in the SVG


# file and directory names hold no slash: an opening tag only
IN_NAME = f"{HOSTILE['clear']}{HOSTILE['osc8']}[bold red]x{HOSTILE['cr']}{HOSTILE['c1']}{HOSTILE['bidi']}"
RUN = f"run{IN_NAME}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run whose name, model class, parameter names, alerts and failure status hold every trick."""
    d = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    net = type(f"Net{HOSTILE['clear']}{HOSTILE['close']}", (nn.Module,), {"forward": lambda self, x: x @ self.w})()
    net.register_parameter(f"w{HOSTILE['clipboard']}{HOSTILE['style']}{HOSTILE['caret']}{HOSTILE['bidi']}",
                           nn.Parameter(torch.randn(4, 1)))
    net.w = next(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1e30)  # NaN after a step or two: alerts quote the parameter
    with pytest.raises(RuntimeError):
        with weightkit.watch(net, optimizer=opt, every=1, run_dir=d, name=RUN):
            for _ in range(4):
                opt.zero_grad()
                (net(torch.randn(8, 4)) ** 2).sum().backward()
                opt.step()
            raise RuntimeError(f"boom{HOSTILE['clear']}{HOSTILE['close']}")
    return d


def test_runs_list_and_show_are_literal(run_dir):
    name = RUN
    param = f"w{HOSTILE['clipboard']}{HOSTILE['style']}{HOSTILE['caret']}{HOSTILE['bidi']}"
    broken = run_dir / f"bad{IN_NAME}"  # a store runs list refuses: one error line naming it, exit 2
    broken.mkdir(exist_ok=True)
    (broken / "watch.sqlite").write_bytes(b"not a database")
    r = cli("runs", "list", "--dir", run_dir, codes=(2,))
    shows(r.stdout, name, f"boom{HOSTILE['clear']}{HOSTILE['close']}")
    shows(r.stderr, f"bad{IN_NAME}")
    out = cli("runs", "show", name, "--dir", run_dir).stdout
    shows(out, name, param, f"Net{HOSTILE['clear']}{HOSTILE['close']}")
    data = json.loads(cli("runs", "show", name, "--dir", run_dir, "--json").stdout)
    assert data["run"] == name
    cli("runs", "plot", name, "--dir", run_dir, "-o", run_dir / "g.svg", "--include-bias")
    xml.dom.minidom.parse(str(run_dir / "g.svg"))


def test_warnings_raised_during_a_command_are_escaped(capsys):
    import warnings

    import typer

    from weightkit.cli._app import guard

    def body():
        warnings.warn(f"glyph {HOSTILE['clear']}{HOSTILE['osc8']} missing", UserWarning, stacklevel=1)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.raises(typer.Exit):
            guard(body)
    err = capsys.readouterr().err
    assert "glyph \\x1b[2J\\x1b]8;;" in err and RAW.search(err.replace("\n", "")) is None


# ---- a tensor with no elements ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["big", "npy"])
def test_shape_two_to_the_63_times_zero_is_simply_empty(files, tmp_path, key):
    path = files[key]
    out = cli("summary", path).stdout
    assert "9223372036854775808×0×3×3" in out
    cli("stats", path)
    cli("doctor", path)
    cli("report", path, "-o", tmp_path / "r.html")
    cli("quantize-error", path)
    cli("convert", path, tmp_path / "c.safetensors")
    name = "big" if key == "npy" else "conv.weight"
    assert weightkit.open(tmp_path / "c.safetensors")[name].shape == (2**63, 0, 3, 3)
    for kind in ("hist", "norms", "heatmap", "filters"):
        cli("plot", kind, path, "-o", tmp_path / "p.png", codes=(0, 2))
    w = weightkit.open(path)[name]
    with pytest.raises(CorruptFileError, match="no numpy or torch array can hold"):
        w.numpy()
    with pytest.raises(CorruptFileError, match="no numpy or torch array can hold"):
        w.torch()


def test_empty_tensors_are_read_from_nothing_and_skipped_by_checks_and_pictures(tmp_path):
    path = write_safetensors(tmp_path / "e.safetensors", {
        "fc.weight": ("F32", (0, 3), b""), "conv.weight": ("F32", (4, 0, 3, 3), b""),
        "bn.num_batches_tracked": ("I64", (0,), b""), "bn.running_mean": ("F32", (0,), b""),
        "bn.running_var": ("F32", (0,), b""), "head.weight": f32(2, 3)})
    ws = weightkit.open(path)
    assert ws["fc.weight"].numpy().shape == (0, 3) and ws["conv.weight"].torch().shape == (4, 0, 3, 3)
    assert weightkit.doctor(ws).exit_code == 0
    cli("doctor", path)
    cli("report", path, "-o", tmp_path / "r.html")
    cli("plot", "heatmap", path, "-o", tmp_path / "h.png")  # draws head.weight, the one with values
    assert weightkit.diff(ws, ws).layers[0].layer == "head"
