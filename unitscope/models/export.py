"""Models saved with `torch.export.save` (.pt2 ExportedPrograms), read without running code.

`torch.export.load` unpickles parts of the archive (the sample inputs, tensors saved with pickle,
opaque constants) and evaluates text of the program (shape expressions through `sympy.sympify`,
guard code through `exec`). A .pt2 from a model hub is data, so unitscope reads the archive
itself: the program is JSON, checked before torch sees it (only ATen/prims operators, shape
expressions of symbols, numbers and arithmetic, no guard code); tensors come from their raw bytes
or `torch.load(weights_only=True)`; any part that would need more (an opaque or custom object, a
pickle that is not plain tensors) is refused in one line naming the file and the part, unless the
user opts in with `model.trust_code: true` (then `torch.export.load` reads it as it is).

`torch.export.unflatten` rebuilds the program's module tree, so every module of the original
model keeps its path (`features.4`, `layer2.1`, `_blocks.3`) and takes forward hooks as an
ordinary `nn.Module` does; its operations run as ATen ops that a TorchFunctionMode sees, so the
receptive-field walk, the gradient probe and the projections work on it unchanged. The reader
uses torch's own deserializer (`torch._export.serde`, pinned torch) on the checked JSON."""
from __future__ import annotations

import functools
import io
import json
import os
import re
import tokenize
import warnings
import zipfile

TORCHSCRIPT_RETIRED = (
    "is a TorchScript file; unitscope reads models saved with torch.export instead: "
    "ep = torch.export.export(model.eval(), (torch.zeros(2, 3, H, W),), dynamic_shapes="
    "{'x': {0: torch.export.Dim('batch')}}); torch.export.save(ep, 'model.pt2')")
TRUST = "set model.trust_code: true only if you trust whoever made the file"

# Operators a program may call: ATen, prims and torch's higher-order ops, Python arithmetic on sizes.
TARGET = re.compile(r"torch\.ops\.(aten|prims|higher_order)\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?"
                    r"|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pow|eq|ne|lt|le|"
                    r"gt|ge|and_|or_|not_)|math\.(ceil|floor|trunc|sqrt)|torch\.sym_\w+|torch\._sym_sqrt")
# Shape expressions (sympy's srepr of symbolic sizes): these names, symbols, numbers, arithmetic.
SYMPY_NAMES = frozenset("""
    Symbol Integer Rational Float Add Mul Pow Max Min Abs Mod Eq Ne Lt Le Gt Ge And Or Not
    StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality Piecewise
    ExprCondPair true false True False oo zoo nan Infinity NegativeInfinity IntInfinity
    NegativeIntInfinity ceiling floor sqrt FloorDiv ModularIndexing Where PythonMod CleanDiv
    CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv
    IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat
    Identity OpaqueUnaryFn_log2 BitwiseFn_bitwise_and BitwiseFn_bitwise_or
    positive negative integer nonnegative nonpositive real finite rational zero nonzero even odd
    commutative
""".split())
SYMBOL = re.compile(r"[a-z]+\d+")
EXPR_OPS = frozenset("( ) , = + - * / ** // % < > <= >= == !=".split())


class UnsafeModelFile(ValueError):
    """A model file that would run code (or could not be shown not to) when read."""


def archive_kind(path: str | os.PathLike) -> str:
    """'pt2', 'torchscript' or 'other', from the names inside the zip archive."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "other"
    if any(n.endswith("/archive_format") for n in names):
        return "pt2"
    if any(n.endswith("/code/__torch__.py") or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "other"


def _refuse(path: str, part: str, why: str) -> UnsafeModelFile:
    return UnsafeModelFile(f"{path!r}: {part} {why}; unitscope runs no code from model files "
                           f"({TRUST})")


def _why(e: Exception) -> str:
    """The line of a weights-only unpickler's error that names what it refused."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "WeightsUnpickler error" in ln:
            return ln[:160]
    return (lines[0][:160] if lines else type(e).__name__)


def _check_expr(path: str, text: str) -> None:
    """Refuse a shape expression that is more than sympy constructors, symbols and arithmetic:
    `sympy.sympify` evaluates it as Python."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise _refuse(path, f"shape expression {text[:80]!r}", "cannot be read") from None
    for tok in tokens:
        ok = (tok.type in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
              or (tok.type == tokenize.NAME and (tok.string in SYMPY_NAMES or SYMBOL.fullmatch(tok.string)))
              or (tok.type == tokenize.STRING and re.fullmatch(r"'[a-z]+\d+'", tok.string))
              or (tok.type == tokenize.OP and tok.string in EXPR_OPS))
        if not ok:
            raise _refuse(path, f"shape expression {text[:80]!r}",
                          f"holds {tok.string!r}, which is not a symbol, number or arithmetic")


def _check_program(path: str, program: dict) -> None:
    """Walk the program's JSON: every operator must be one torch defines, every shape expression
    plain arithmetic, and there must be no guard code."""
    if program.get("guards_code"):
        raise _refuse(path, "the program's guard code", "would be run as Python by torch.export")

    def walk(node) -> None:
        if isinstance(node, dict):
            target = node.get("target")
            if isinstance(target, str) and "inputs" in node and "outputs" in node:
                if not TARGET.fullmatch(target):
                    raise _refuse(path, f"operator {target[:80]!r}",
                                  "is not an ATen, prims or higher-order torch operator")
            expr = node.get("expr_str")
            if isinstance(expr, str):
                _check_expr(path, expr)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(program)


class _Archive:
    """The members of a .pt2 zip, by their path under the archive's one root folder."""

    def __init__(self, path: str, z: zipfile.ZipFile):
        self.path, self.z = path, z
        names = z.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise ValueError(f"{path!r} is not a torch.export file (one root folder expected)")
        self.root = roots.pop()
        self.names = {n.split("/", 1)[1] for n in names}

    def read(self, name: str) -> bytes:
        try:
            return self.z.read(f"{self.root}/{name}")
        except KeyError:
            raise ValueError(f"{self.path!r} is not a complete torch.export file: no {name}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{self.path!r}: member {name} cannot be read ({e})") from None

    def size(self, name: str) -> int:
        try:
            return self.z.getinfo(f"{self.root}/{name}").file_size
        except KeyError:
            raise ValueError(f"{self.path!r} is not a complete torch.export file: no {name}") from None

    def json(self, name: str):
        data = self.read(name)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{self.path!r}: {name} is not JSON ({e})") from None


def _open(path: str) -> tuple[zipfile.ZipFile, _Archive]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    kind = archive_kind(path)
    if kind == "torchscript":
        raise ValueError(f"{path!r} {TORCHSCRIPT_RETIRED}")
    if kind != "pt2":
        raise ValueError(f"{path!r} is not a torch.export file (.pt2 written by torch.export.save)")
    z = zipfile.ZipFile(path)
    return z, _Archive(path, z)


def read_header(path: str | os.PathLike) -> dict:
    """The program's JSON (models/model.json), checked to hold nothing torch would run: the plan
    reads the input shape from it without building the model."""
    path = str(path)
    z, a = _open(path)
    with z:
        if a.read("archive_format").strip() != b"pt2":
            raise ValueError(f"{path!r} is not a torch.export file (archive_format is not pt2)")
        models = sorted(n for n in a.names if n.startswith("models/") and n.endswith(".json"))
        if models != ["models/model.json"]:
            raise ValueError(f"{path!r} holds programs {', '.join(models) or 'none'}; unitscope "
                             f"reads files with one program, models/model.json")
        program = a.json("models/model.json")
    if not isinstance(program, dict) or "graph_module" not in program:
        raise ValueError(f"{path!r}: models/model.json is not a torch.export program")
    _check_program(path, program)
    return program


def header_input_shape(program: dict) -> tuple:
    """The (N, C, H, W) of the program's one user input from its JSON: an int where static,
    None where dynamic."""
    gm = program["graph_module"]
    users = [spec["user_input"]["arg"]["as_tensor"]["name"]
             for spec in gm["signature"]["input_specs"] if "user_input" in spec]
    if len(users) != 1:
        raise ValueError(f"the program takes {len(users)} inputs; unitscope feeds one image batch")
    sizes = gm["graph"]["tensor_values"][users[0]]["sizes"]
    return tuple(int(s["as_int"]) if "as_int" in s else None for s in sizes)


def check_file(path: str | os.PathLike, trust_code: bool = False) -> tuple:
    """Check a .pt2 without building it — its program (see `read_header`), every payload it would
    unpickle and its sample inputs — and return its input shape. Raises UnsafeModelFile or
    ValueError in one line. With `trust_code`, only the header is read."""
    path = str(path)
    if trust_code:
        return header_input_shape(_plain_header(path))
    program = read_header(path)
    z, a = _open(path)
    with z:
        for kind in ("weights", "constants"):
            _payloads(a, kind, load=False)
        _sample_inputs(a)
    return header_input_shape(program)


def _plain_header(path: str) -> dict:
    z, a = _open(path)
    with z:
        return a.json("models/model.json")


def _payloads(a: _Archive, kind: str, load: bool = True) -> dict:
    """The weights or constants of the program by name, from raw bytes (tensors stored as data)
    or torch.load(weights_only=True) (tensors stored as a pickle); anything else refused."""
    import torch
    from torch._export.serde.serialize import deserialize_scalar_type

    legacy = f"data/{kind}/model.pt"
    if legacy in a.names:
        raise _refuse(a.path, f"{legacy} (the {kind} of torch 2.7's format)", "is a pickle")
    config_name = f"data/{kind}/model_{kind}_config.json"
    config = a.json(config_name).get("config", {}) if config_name in a.names else {}
    storages: dict[str, "torch.Tensor"] = {}
    out = {}
    for fqn, meta in config.items():
        member = f"data/{kind}/{meta['path_name']}"
        part = f"{'weight' if kind == 'weights' else 'constant'} {fqn!r} ({member})"
        if meta["path_name"].startswith(("custom_obj_", "opaque_obj_")):
            raise _refuse(a.path, part, "is a Python object that torch would unpickle")
        if meta.get("use_pickle"):
            data = a.read(member)
            try:
                value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            except Exception as e:  # the weights-only unpickler names what it refused
                raise _refuse(a.path, part, f"is a pickle that is not plain tensors ({_why(e)})") from None
            if not isinstance(value, torch.Tensor):
                raise _refuse(a.path, part, f"unpickles to a {type(value).__name__}, not a tensor")
            if load:
                out[fqn] = value
            continue
        if not load:
            continue
        tm = meta["tensor_meta"]
        dtype = deserialize_scalar_type(tm["dtype"])
        sizes = [s["as_int"] for s in tm["sizes"]]
        strides = [s["as_int"] for s in tm["strides"]]
        if meta["path_name"] not in storages:
            storages[meta["path_name"]] = torch.frombuffer(bytearray(a.read(member)), dtype=dtype) \
                if a.size(member) else None
        flat = storages[meta["path_name"]]
        try:  # an empty record stands for zeros (torch writes no bytes for them)
            t = torch.zeros(sizes, dtype=dtype) if flat is None else \
                torch.as_strided(flat, sizes, strides, tm["storage_offset"]["as_int"])
        except RuntimeError as e:
            raise ValueError(f"{a.path!r}: {part} does not fit its shape ({str(e).splitlines()[0]})") from None
        out[fqn] = torch.nn.Parameter(t, requires_grad=tm.get("requires_grad", False)) \
            if meta.get("is_param") else t
    return out


def _sample_inputs(a: _Archive):
    import torch

    member = "data/sample_inputs/model.pt"
    if member not in a.names:
        return None
    try:
        value = torch.load(io.BytesIO(a.read(member)), weights_only=True, map_location="cpu")
    except Exception as e:
        raise _refuse(a.path, f"the sample inputs ({member})",
                      f"are a pickle that is not plain tensors ({_why(e)})") from None
    if not isinstance(value, tuple):
        raise _refuse(a.path, f"the sample inputs ({member})", f"are a {type(value).__name__}, not a tuple")
    return value


def load_program(path: str | os.PathLike, trust_code: bool = False):
    """The ExportedProgram of a .pt2 file, built from its checked JSON and its tensors only
    (`trust_code`: read by torch.export.load, which may run code the file carries)."""
    import torch

    path = str(path)
    if trust_code:
        _open(path)[0].close()  # the one-line refusals of files that are not .pt2
        try:
            return torch.export.load(path)
        except Exception as e:
            raise ValueError(f"{path!r} cannot be read as a torch.export program: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    program = read_header(path)
    z, a = _open(path)
    with z:
        if "byteorder" in a.names and a.read("byteorder").strip() != b"little":
            raise ValueError(f"{path!r} stores big-endian tensors; unitscope reads little-endian files")
        weights = _payloads(a, "weights")
        constants = _payloads(a, "constants")
        sample = _sample_inputs(a)
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        return ExportedProgramDeserializer().deserialize(serialized, weights, constants, sample)
    except UnsafeModelFile:
        raise
    except Exception as e:  # the deserializer's own errors: KeyError, SerializeError, ...
        raise ValueError(f"{path!r} cannot be read as a torch.export program: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def input_shape(program) -> tuple:
    """The (N, C, H, W) of the program's one user input; an int where the dimension is static,
    None where it was exported as dynamic."""
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user) != 1:
        raise ValueError(f"the program takes {len(user)} inputs; unitscope feeds one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user[0])
    return tuple(int(d) if isinstance(d, int) else None for d in node.meta["val"].shape)


@functools.lru_cache(maxsize=4)
def _cached_program(path: str, size: int, mtime_ns: int, trust_code: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = load_program(path, trust_code)
    return program, input_shape(program)


def load_exported(path: str | os.PathLike, trust_code: bool = False):
    """The unflattened module of a .pt2 file, on the CPU in eval mode; the program is read once
    per process (see `load_program`). Attributes it gains: `unitscope_input_shape` (N, C, H, W
    with None for dynamic dimensions)."""
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    st = os.stat(path)
    program, shape = _cached_program(os.path.abspath(path), st.st_size, st.st_mtime_ns, trust_code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.unflatten(program)
    module.unitscope_input_shape = shape
    return module.eval()
