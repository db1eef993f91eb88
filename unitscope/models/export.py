"""Models saved with `torch.export.save` (.pt2 ExportedPrograms).

`torch.export.unflatten` rebuilds the program's module tree, so every module of the original
model keeps its path (`features.4`, `layer2.1`, `_blocks.3`) and takes forward hooks as an
ordinary `nn.Module` does; a module called several times fires at each call. Its operations run as
ATen ops that a TorchFunctionMode sees, so the receptive-field walk, the gradient probe and the
projections work on it unchanged. Only public torch APIs are used."""
from __future__ import annotations

import os
import warnings
import zipfile

import torch
from torch import nn

TORCHSCRIPT_RETIRED = (
    "is a TorchScript file; unitscope reads models saved with torch.export instead: "
    "ep = torch.export.export(model.eval(), (torch.zeros(2, 3, H, W),), dynamic_shapes="
    "{'x': {0: torch.export.Dim('batch')}}); torch.export.save(ep, 'model.pt2')")


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


def input_shape(program) -> tuple:
    """The (N, C, H, W) of the program's one user input; an int where the dimension is static,
    None where it was exported as dynamic."""
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user) != 1:
        raise ValueError(f"the program takes {len(user)} inputs; unitscope feeds one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user[0])
    return tuple(int(d) if isinstance(d, int) else None for d in node.meta["val"].shape)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The unflattened module of a .pt2 file, on the CPU in eval mode. Attributes it gains:
    `unitscope_input_shape` (N, C, H, W with None for dynamic dimensions)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    kind = archive_kind(path)
    if kind == "torchscript":
        raise ValueError(f"{path!r} {TORCHSCRIPT_RETIRED}")
    if kind != "pt2":
        raise ValueError(f"{path!r} is not a torch.export file (.pt2 written by "
                         f"torch.export.save)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.load(path)
        except Exception as e:  # the archive's own reader: RuntimeError, KeyError, ...
            raise ValueError(f"{path!r} cannot be read as a torch.export program: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        shape = input_shape(program)
        module = torch.export.unflatten(program)
    module.unitscope_input_shape = shape
    return module.eval()
