"""What a pickled global may be: the allow-list, the known gadgets, and the judge.

``judge(module, name)`` decides from names alone (nothing is imported) and always on the
whole dotted path ``module.name``, so ``builtins`` + ``getattr``, ``os`` + ``system.__call__``
and ``torch`` + ``serialization.load`` are judged like what they resolve to.

Order: exact allow-list -> known gadget (critical) -> caller's ``allow`` -> known harmless
classes that still need code -> "needs code". Critical gadgets cannot be allowed by a caller.
"""

from __future__ import annotations

import re
import sys

__all__ = ["SAFE_GLOBALS", "NESTED_LOADERS", "judge", "fix_imports", "storage_element_size", "keras_findings"]

_TORCH_DTYPES = (
    "float32 float64 float16 bfloat16 complex32 complex64 complex128 uint8 int8 int16 int32 int64 "
    "bool uint16 uint32 uint64 uint1 uint2 uint3 uint4 uint5 uint6 uint7 int1 int2 int3 int4 int5 "
    "int6 int7 qint8 quint8 qint32 quint4x2 quint2x4 float8_e4m3fn float8_e4m3fnuz float8_e5m2 "
    "float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 bits1x8 bits2x4 bits4x2 bits8 bits16 "
    # layouts, memory formats and quantization schemes are pickled the same way
    "strided sparse_coo sparse_csr sparse_csc sparse_bsr sparse_bsc jagged contiguous_format "
    "channels_last channels_last_3d preserve_format per_tensor_affine per_channel_affine "
    "per_channel_affine_float_qparams per_tensor_symmetric per_channel_symmetric"
).split()
# storage class -> element size in bytes (legacy tar checkpoints need it to skip raw data)
_STORAGE_SIZES = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
    "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1,
    "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1,
}
_LEGACY_TENSORS = "Double Float Half BFloat16 Long Int Short Char Byte Bool".split()
_REBUILDERS = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor _rebuild_nested_tensor "
    "_rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor "
    "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass"
).split()

SAFE_GLOBALS: frozenset[str] = frozenset(
    [f"torch._utils.{n}" for n in _REBUILDERS]
    + [f"torch.{d}" for d in _TORCH_DTYPES]
    + [f"{m}.{s}Storage" for m in ("torch", "torch.cuda") for s in _STORAGE_SIZES]
    + [f"{m}.{t}Tensor" for m in ("torch", "torch.cuda") for t in _LEGACY_TENSORS]
    + """
    torch._tensor._rebuild_from_type_v2 torch.tensor._rebuild_from_type_v2
    torch.storage.UntypedStorage torch.storage.TypedStorage torch.storage._StorageBase
    torch.Size torch.device torch.Tensor torch.nn.parameter.Parameter torch.serialization._get_layout
    collections.OrderedDict collections.Counter _codecs.encode
    builtins.set builtins.frozenset builtins.bytearray builtins.slice builtins.complex builtins.range
    builtins.int builtins.float builtins.bool builtins.str builtins.bytes builtins.tuple
    builtins.list builtins.dict
    numpy.core.multiarray._reconstruct numpy._core.multiarray._reconstruct numpy.ndarray numpy.dtype
    numpy.core.multiarray.scalar numpy._core.multiarray.scalar
    numpy.core.numeric._frombuffer numpy._core.numeric._frombuffer
    numpy.random._pickle.__randomstate_ctor numpy.random._pickle.__generator_ctor
    numpy.random._pickle.__bit_generator_ctor
    """.split()
)

# globals that deserialise their bytes argument: a constant payload handed to them is scanned too
NESTED_LOADERS = frozenset({
    "pickle.loads", "pickle._loads", "_pickle.loads", "dill.loads", "cloudpickle.loads",
    "torch.storage._load_from_bytes", "joblib.load", "numpy.loads",
})
# encodings under which _codecs.encode(str, enc) is evaluated statically (protocol 2 bytes)
SAFE_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8", "ascii"})

# ---- known code-execution gadgets ----------------------------------------------------------
# every global under these prefixes is critical (prefix = exact path or path + ".")
_CRITICAL_PREFIXES = tuple("""
    os posix nt _posixsubprocess subprocess pty commands popen2 sys importlib imp zipimport pkgutil
    runpy timeit cProfile profile trace pdb bdb code codeop doctest idlelib pydoc marshal pickle
    _pickle cPickle pickletools shelve dill cloudpickle shutil socket _socket ssl http urllib
    urllib2 ftplib smtplib telnetlib xmlrpc requests httpx aiohttp webbrowser ctypes _ctypes cffi
    asyncio multiprocessing concurrent _thread threading signal gc io _io tempfile venv ensurepip
    pip setuptools distutils site sysconfig builtins.eval builtins.exec builtins.compile
    builtins.open builtins.__import__ builtins.getattr builtins.setattr builtins.delattr
    builtins.globals builtins.locals builtins.vars builtins.input builtins.breakpoint builtins.type
    builtins.help builtins.exit builtins.quit builtins.memoryview builtins.classmethod
    builtins.staticmethod builtins.property builtins.super builtins.print builtins.apply
    builtins.execfile builtins.file builtins.reload
    types.FunctionType types.CodeType types.LambdaType types.MethodType types.ModuleType
    types.BuiltinFunctionType operator.attrgetter operator.methodcaller _operator.attrgetter
    _operator.methodcaller functools.reduce numpy.testing numpy.load numpy.lib.npyio numpy.f2py
    numpy.distutils numpy.ctypeslib numpy.lib.format.read_array numpy.save numpy.fromfile
    numpy.memmap torch.load torch.serialization torch._dynamo torch._inductor torch.jit
    torch.fx.graph_module torch.hub torch.utils.cpp_extension torch.package torch.storage._load_from_bytes
    torch.testing torch._export torch.export torch.compile torch.ops torch._ops torch._C._jit
    torch.utils.collect_env torch.utils.data.datapipes.utils.decoder keras.saving
    keras.src.saving joblib.load joblib.numpy_pickle.load yaml.load yaml.unsafe_load yaml.full_load
    """.split())
# a component after the first naming one of these means an alias of a dangerous module
_DANGEROUS_COMPONENTS = frozenset("""
    os sys subprocess builtins __builtin__ __builtins__ importlib posix nt shutil socket pickle
    _pickle marshal runpy pty ctypes webbrowser pdb timeit
    """.split())
_DANGEROUS_LEAF = re.compile(
    r"(?:^|_)(?:system|[Pp]open\d?|spawn\w*|exec\w*|eval|compile|loads?|load_\w+|unsafe_load|"
    r"import_module|import|open|run_?(?:code|module|path|string|source|ctx)|runcall|runeval|"
    r"get_?attr|set_?attr|del_?attr|getoutput|getstatusoutput|check_output|check_call|"
    r"write_(?:text|bytes)|unlink|rmtree|remove|rmdir|chmod|chown|kill|fork\w*|resolve_name|"
    r"interact|breakpoint|set_trace)$")

# classes/functions that need code but are known not to execute anything on their own
_BENIGN_NEEDS_CODE = frozenset("""
    copyreg._reconstructor copyreg.__newobj__ copyreg.__newobj_ex__ copy_reg._reconstructor
    datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone
    collections.defaultdict collections.deque functools.partial re._compile logging.getLogger
    array._array_reconstructor zoneinfo.ZoneInfo._unpickle zoneinfo._zoneinfo.ZoneInfo._unpickle
    enum.Enum types.SimpleNamespace argparse.Namespace builtins.object decimal.Decimal
    fractions.Fraction uuid.UUID pathlib.Path pathlib.PosixPath pathlib.WindowsPath
    pathlib.PurePath pathlib.PurePosixPath pathlib.PureWindowsPath
    torch.jit._pickle.build_intlist torch.jit._pickle.build_tensorlist torch.jit._pickle.build_doublelist
    torch.jit._pickle.build_boollist torch.jit._pickle.build_tensor_from_id torch.jit._pickle.restore_type_tag
    """.split())  # the TorchScript pickler's list/tag rebuilders return their argument (a .jit file's pickles)
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__builtin__", "copy_reg"}


def fix_imports(module: str, name: str, proto: int) -> tuple[str, str]:
    """Python 2 names a protocol <3 pickle uses, mapped as ``pickle.Unpickler.find_class`` does."""
    import _compat_pickle as cp

    if proto < 3:
        if (module, name) in cp.NAME_MAPPING:
            return cp.NAME_MAPPING[(module, name)]
        if module in cp.IMPORT_MAPPING:
            return cp.IMPORT_MAPPING[module], name
    if module == "torch.tensor":  # torch.load's load_module_mapping
        return "torch._tensor", name
    return module, name


def _has_prefix(path: str, prefixes) -> str | None:
    for p in prefixes:
        if path == p or path.startswith(p + "."):
            return p
    return None


def critical_reason(path: str) -> str | None:
    """Why ``path`` (``module.name``) is a code-execution gadget, or ``None``."""
    parts = path.split(".")
    p = _has_prefix(path, _CRITICAL_PREFIXES)
    if p:
        return f"{p} runs code, reads/writes files or deserialises data"
    for part in parts[1:]:
        if part.startswith("__") and part.endswith("__") and len(part) > 4:
            return f"dunder attribute {part} in the path: a known way to reach callables"
        if part in _DANGEROUS_COMPONENTS:
            return f"the path goes through the module {part!r}"
    if _DANGEROUS_LEAF.search(parts[-1]):
        return f"{parts[-1]} executes code, loads data or touches files"
    return None


def judge(module: str, name: str, allow=frozenset()) -> tuple[str, str]:
    """``(status, reason)`` for the global ``module`` + ``name`` (already mapped by fix_imports).

    status: ``allowed`` (on the allow-list), ``user-allowed`` (in ``allow``), ``critical``
    (a code-execution gadget) or ``needs-code`` (anything else: a class to import).

    Example:
        >>> judge("torch._utils", "_rebuild_tensor_v2")[0], judge("builtins", "getattr")[0]
        ('allowed', 'critical')
        >>> judge("os", "system.__call__")[0], judge("__main__", "MyModel")[0]
        ('critical', 'needs-code')
    """
    path = f"{module}.{name}"
    if path in SAFE_GLOBALS and "." not in name:  # exactly as written by torch/numpy, not a dotted lookup
        return "allowed", "rebuilds tensors or plain data"
    if not module or not name or any(not p for p in path.split(".")):
        return "critical", "empty component in the global's name"
    reason = critical_reason(path) if path not in _BENIGN_NEEDS_CODE else None
    if reason:
        return "critical", reason
    attrs = name.split(".")
    if path not in _BENIGN_NEEDS_CODE and len(attrs) > 1 and any(not a[:1].isupper() for a in attrs[1:]):
        return "critical", "attribute path to a method or function: pickles reference classes, not this"
    if path in allow:
        return "user-allowed", "allowed by the caller"
    if path in _BENIGN_NEEDS_CODE:
        return "needs-code", "a known class; loading it needs its code but runs nothing by itself"
    root = module.split(".")[0]
    if root in _STDLIB and not attrs[-1][:1].isupper():
        return "critical", f"standard-library function {path} is not known to rebuild data"
    return "needs-code", "a class or function the loader must import"


def storage_element_size(path: str) -> int | None:
    """Element size of a typed storage class such as ``torch.FloatStorage``."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf.endswith("Storage"):
        return _STORAGE_SIZES.get(leaf[: -len("Storage")])
    return None


# Keras class names that load without custom code (Keras 3 registry plus a few Keras 2 names);
# Lambda and the wrappers that hold callables or run torch.load are left out on purpose.
KERAS_NAMES = frozenset("""
AUC AWQDTypePolicy Accuracy Activation ActivityRegularization Adadelta Adafactor Adagrad Adam
AdamW Adamax AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D
AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add AdditiveAttention
AlphaDropout Attention AugMix AutoContrast Average AveragePooling1D AveragePooling2D
AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization Bidirectional BinaryAccuracy
BinaryCrossentropy BinaryFocalCrossentropy BinaryIoU CTC CategoricalAccuracy
CategoricalCrossentropy CategoricalFocalCrossentropy CategoricalGeneralizedCrossEntropy
CategoricalHinge CategoryEncoding CenterCrop Circle Concatenate ConcordanceCorrelation Constant
Constraint ContrastLimitedAdaptiveHistogramEqualization Conv1D Conv1DTranspose Conv2D
Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D Convolution1D
Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D Convolution3DTranspose
CosineDecay CosineDecayRestarts CosineSimilarity Cropping1D Cropping2D Cropping3D CutMix
DTypePolicy DTypePolicyMap Dense DepthwiseConv1D DepthwiseConv2D Dice Discretization Dot Dropout
ELU EinsumDense Embedding Equalization ExponentialDecay F1Score FBetaScore FalseNegatives
FalsePositives Flatten FloatDTypePolicy Ftrl Functional GPTQDTypePolicy GRU GRUCell
GaussianDropout GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D
GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D
GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D
GlorotNormal GlorotUniform GroupNormalization GroupQueryAttention HashedCrossing Hashing
HeNormal HeUniform Hinge Huber Identity IdentityInitializer Initializer InputLayer InputSpec
Int4DTypePolicy IntegerLookup InverseTimeDecay IoU KLDivergence L1 L1L2 L2 LSTM
LSTMCell Lamb LayerNormalization LeakyReLU LearningRateSchedule LecunNormal LecunUniform Lion
LogCosh LogCoshError Loss LossScaleOptimizer Masking MaxNorm MaxNumBoundingBoxes MaxPool1D
MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Maximum Mean MeanAbsoluteError
MeanAbsolutePercentageError MeanIoU MeanMetricWrapper MeanSquaredError
MeanSquaredLogarithmicError MelSpectrogram Metric MinMaxNorm Minimum MixUp Model
MultiHeadAttention MultiOptimizer Multiply Muon Nadam NonNeg Normalization OneHotIoU
OneHotMeanIoU Ones Optimizer OptimizerMap Orthogonal OrthogonalInitializer OrthogonalRegularizer
PReLU PearsonCorrelation Permute PiecewiseConstantDecay Pipeline Poisson PolynomialDecay
Precision PrecisionAtRecall QuantizedDTypePolicy QuantizedFloat8DTypePolicy R2Score
RMSNormalization RMSprop RNN RandAugment RandomBrightness RandomColorDegeneration
RandomColorJitter RandomContrast RandomCrop RandomElasticTransform RandomErasing RandomFlip
RandomGaussianBlur RandomGrayscale RandomHue RandomInvert RandomNormal RandomPerspective
RandomPosterization RandomRotation RandomSaturation RandomSharpness RandomShear
RandomTranslation RandomUniform RandomZoom ReLU Recall RecallAtPrecision Regularizer
RepeatVector Rescaling Reshape Resizing ReversibleEmbedding RootMeanSquaredError SGD STFT
STFTInitializer STFTSpectrogram ScheduleFreeAdamW SensitivityAtSpecificity SeparableConv1D
SeparableConv2D SeparableConvolution1D SeparableConvolution2D Sequential SimpleRNN SimpleRNNCell
Softmax Solarization SparseCategoricalAccuracy SparseCategoricalCrossentropy
SparseTopKCategoricalAccuracy SpatialDropout1D SpatialDropout2D SpatialDropout3D
SpecificityAtSensitivity SpectralNormalization SquaredHinge StackedRNNCells StringLookup
Subtract Sum TextVectorization TimeDistributed TopKCategoricalAccuracy TrueNegatives
TruePositives TruncatedNormal Tversky UnitNorm UnitNormalization UpSampling1D UpSampling2D
UpSampling3D VarianceScaling Wrapper ZeroPadding1D ZeroPadding2D ZeroPadding3D Zeros
ThresholdedReLU LocallyConnected1D LocallyConnected2D CuDNNGRU CuDNNLSTM Merge
""".split())
# Keras classes that run code from the file when deserialised
KERAS_CRITICAL = frozenset({"Lambda", "__lambda__", "TorchModuleWrapper", "TFSMLayer", "JaxLayer", "FlaxLayer"})


def keras_findings(raw: bytes, allow=frozenset()) -> list[tuple[str, str, str | None]]:
    """``(rule, message, global)`` for each object in a Keras config (``.keras`` config.json or a
    legacy ``model_config``, as JSON bytes) that runs code (Lambda: critical) or needs code.

    Example:
        >>> keras_findings(b'{"class_name": "Lambda", "config": {}}')[0][0]
        'keras-lambda'
    """
    import json

    try:
        cfg = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return [("container-error", f"Keras config is not valid JSON ({str(e)[:80]})", None)]
    out: list[tuple[str, str, str | None]] = []
    seen: set = set()
    stack = [cfg]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
            continue
        if not isinstance(obj, dict):
            continue
        stack.extend(obj.values())
        cls, module, reg = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
        if not isinstance(cls, str):
            continue
        target = f"{module}.{obj.get('config')}" if cls == "function" and isinstance(module, str) else (
            f"{module}.{cls}" if isinstance(module, str) else cls)
        if (cls, target) in seen:
            continue
        seen.add((cls, target))
        if cls in KERAS_CRITICAL:
            rule = "keras-lambda" if "ambda" in cls else "global-critical"
            out.append((rule, f"Keras {cls}: deserialising it runs code stored in or named by the file", target))
        elif isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
            why = critical_reason(target)
            if why:
                out.append(("global-critical", f"{target}: {why}", target))
            elif isinstance(reg, str) and ">" in reg:
                out.append(("keras-custom-object", f"needs code: registered custom object {reg}", reg))
        elif isinstance(module, str):
            m, _, n = target.rpartition(".")
            status, why = judge(m, n, allow) if m and n else ("critical", "malformed module/name")
            if status == "critical":
                out.append(("global-critical", f"{target}: {why}", target))
            elif status == "needs-code":
                out.append(("keras-custom-object", f"needs code: {target}", target))
        elif not cls.startswith("__") and cls not in KERAS_NAMES and cls not in allow:
            out.append(("keras-custom-object", f"needs code: {cls} (not a built-in Keras class)", cls))
    return out
