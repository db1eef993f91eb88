"""TorchScript models (`torchscript:path/to/model.pt`) made visible to unitscope.

A ScriptModule takes no forward hooks and runs its ops out of Python's sight. So its forward graph
is inlined and every node is placed in the module call that made it (TorchScript keeps that as the
node's module hierarchy in scripted and traced files); a module's output is what its nodes make
and the rest of the graph uses. `ScriptedModel` mirrors the script's module tree with
placeholder modules: its forward runs a copy of the graph that also returns the outputs of every
placeholder that has a forward hook and passes each through its placeholder, so the hooks fire as
they would on the Python model. `positive_linear` gives the graph the gradient probe needs.
"""
from __future__ import annotations

import contextlib
import io
import os
import re

import torch
from torch import nn

from ..geometry import UnknownReceptiveField

# Ops the gradient probe replaces by the identity (activations, normalisations, dropout): with
# them gone, and every convolution an all-ones kernel, the network is linear and positive.
_IDENTITY_OPS = {f"aten::{name}{suffix}" for suffix in ("", "_") for name in (
    "relu", "relu6", "hardtanh", "leaky_relu", "silu", "gelu", "sigmoid", "hardswish",
    "hardsigmoid", "elu", "selu", "celu", "mish", "tanh", "dropout", "feature_dropout",
    "alpha_dropout", "feature_alpha_dropout")} | {
    "aten::batch_norm", "aten::instance_norm", "aten::group_norm", "aten::layer_norm"}
_CONV_OPS = {"aten::conv2d", "aten::convolution", "aten::_convolution"}
_SEGMENT = re.compile(r"([^.()]+)\(([^()]*)\)")
_HIDDEN = {"SELF", "UNKNOWN_INSTANCE"}  # a method of the same module / an inlined function
_CONTAINERS = ("ModuleList", "ModuleDict", "Sequential")


def _top(node: torch._C.Node) -> torch._C.Node:
    """The node of the graph's top block that holds `node` (itself, or an enclosing if/loop)."""
    while node.owningBlock().owningNode() is not None:
        node = node.owningBlock().owningNode()
    return node


class ModulePaths:
    """Turns a node's module hierarchy into the module's path in the script. The hierarchy names
    the calls, so a module called from a loop over a ModuleList appears without the list
    ("0(MBConvBlock)" for "_blocks.0"); such containers are looked through, matching the
    attribute name and the class."""

    def __init__(self, script: torch.jit.ScriptModule):
        self.children: dict[str, list[tuple[str, str]]] = {}
        self.kinds: dict[str, str] = {}
        for path, module in script.named_modules():
            self.kinds[path] = getattr(module, "original_name", "")
            if path:
                parent, _, leaf = path.rpartition(".")
                self.children.setdefault(parent, []).append((leaf, path))
        self._cache: dict[str, str] = {}

    def _step(self, at: str, name: str, kind: str) -> str:
        for leaf, path in self.children.get(at, []):
            if leaf == name:
                return path
        for leaf, path in self.children.get(at, []):
            if self.kinds[path] in _CONTAINERS:
                for leaf2, path2 in self.children.get(path, []):
                    if leaf2 == name and self.kinds[path2] in (kind, ""):
                        return path2
        return f"{at}.{name}" if at else name  # a call named_modules() does not list

    def __call__(self, node: torch._C.Node) -> str:
        """Module path ("layer1.0.conv1") of the call that made a node; "" for the top module."""
        hierarchy = node.getModuleHierarchy()
        if hierarchy not in self._cache:
            at = ""
            for name, kind in _SEGMENT.findall(hierarchy):
                if name not in _HIDDEN:
                    at = self._step(at, name, kind)
            self._cache[hierarchy] = at
        return self._cache[hierarchy]


def _inside(path: str, module: str) -> bool:
    return path == module or path.startswith(module + ".")


def _neutral(node: torch._C.Node) -> bool:
    """Nodes that belong to no module call: constants, attribute reads, and the nodes TorchScript
    leaves without a module (the size checks of inlined functions)."""
    return node.kind() in ("prim::Constant", "prim::GetAttr") or not node.getModuleHierarchy()


def module_calls(graph: torch._C.Graph, module: str, paths: ModulePaths) -> list[tuple]:
    """The output values of each call of `module` in an inlined forward graph, in order. A call
    is a run of top-level
    nodes made by the module or its children (neutral nodes in between do not end it); its
    outputs are the tensors those nodes make that later nodes outside the run use. Raises
    ValueError when the module makes no op of its own (an identity) or its output is made inside
    a branch or loop."""
    nodes = list(graph.nodes()) + [graph.return_node()]
    order = {node: i for i, node in enumerate(nodes)}
    runs, run = [], []
    for node in nodes:
        if node.kind() != "prim::Return" and not _neutral(node) and _inside(paths(node), module):
            run.append(node)
        elif run and not (_neutral(node) and node.kind() != "prim::Return"):
            runs.append(run)
            run = []
    in_branch = ValueError(f"the output of module {module!r} is made inside a branch or a loop "
                           f"of the TorchScript graph and cannot be recorded; choose an "
                           f"enclosing module")
    if not runs:
        if any(not _neutral(node) and _inside(paths(node), module) for node in _all_nodes(graph)):
            raise in_branch
        raise ValueError(f"module {module!r} makes no operation of its own in the TorchScript "
                         f"graph (an identity, or never called); choose the module before it")
    calls = []
    for run in runs:
        members, last = set(run), order[run[-1]]
        outputs = []
        for node in run:
            for value in node.outputs():
                if value.type().kind() != "TensorType":
                    continue
                users = [_top(use.user) for use in value.uses()]
                if any(u not in members and (order[u] > last or not _neutral(u)) for u in users):
                    outputs.append(value)
        if not outputs:
            raise in_branch
        calls.append(tuple(outputs))
    return calls


def _tuple_return(graph: torch._C.Graph, values: list) -> None:
    """Make the graph return a tuple of `values`."""
    node = graph.create("prim::TupleConstruct", values)
    node.output().setType(torch._C.TupleType([v.type() for v in values]))
    node.insertBefore(graph.return_node())
    graph.return_node().replaceInput(0, node.output())


def _constant(graph: torch._C.Graph, value, before: torch._C.Node) -> torch._C.Value:
    node = graph.create("prim::Constant")
    if value is None:
        node.output().setType(torch._C.NoneType.get())
    elif isinstance(value, torch.Tensor):
        node.t_("value", value)
        node.output().inferTypeFrom(value)
    elif isinstance(value, bool):
        node.i_("value", int(value))
        node.output().setType(torch._C.BoolType.get())
    node.insertBefore(before)
    return node.output()


def _static_tensor(value: torch._C.Value, script: torch.jit.ScriptModule):
    """The tensor a graph value always holds (a module attribute or a constant), else None."""
    node = value.node()
    if node.kind() == "prim::Constant" and value.type().kind() == "TensorType":
        return node.t("value")
    names = []
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        value = node.inputsAt(0)
        node = value.node()
    if not names or value.node().kind() != "prim::Param":
        return None
    obj = script
    for name in reversed(names):
        obj = getattr(obj, name)
    return obj if isinstance(obj, torch.Tensor) else None


def _constant_list(value: torch._C.Value):
    """The list a value holds when it is a constant or a list of constants, else None."""
    if value.node().kind() == "prim::ListConstruct":
        items = [v.toIValue() for v in value.node().inputs()]
        return None if any(i is None for i in items) else items
    constant = value.toIValue()
    return list(constant) if isinstance(constant, (list, tuple)) else None


def _all_nodes(block):
    for node in list(block.nodes()):
        yield node
        for sub in node.blocks():
            yield from _all_nodes(sub)


def positive_linear(graph: torch._C.Graph, script: torch.jit.ScriptModule) -> None:
    """Rewrite an inlined graph of a float64 script in place into the gradient probe's network:
    activations, normalisations and dropout become the identity, each convolution a normalised
    all-ones kernel of the same geometry without bias, max-pooling an average over the same
    window, float constants float64. Raises UnknownReceptiveField where that is not possible (a
    convolution's weight computed in the graph, a dilated max-pool, max-pool indices)."""
    for node in _all_nodes(graph):
        kind = node.kind()
        if kind in _IDENTITY_OPS:
            node.outputsAt(0).replaceAllUsesWith(node.inputsAt(0))
        elif kind in _CONV_OPS:
            weight = _static_tensor(node.inputsAt(1), script)
            if weight is None:
                raise UnknownReceptiveField("a convolution's weight is computed in the graph; "
                                            "the gradient probe needs it as a parameter")
            ones = torch.ones(weight.shape, dtype=torch.float64) / weight[0].numel()
            node.replaceInput(1, _constant(graph, ones, node))
            node.replaceInput(2, _constant(graph, None, node))
        elif kind == "aten::max_pool2d_with_indices":
            raise UnknownReceptiveField("max-pool returning indices has no probe")
        elif kind == "aten::max_pool2d":
            x, kernel, stride, padding, dilation, ceil = list(node.inputs())
            if _constant_list(dilation) != [1, 1]:
                raise UnknownReceptiveField("dilated max-pool has no probe")
            pool = graph.create("aten::avg_pool2d", [
                x, kernel, stride, padding, ceil, _constant(graph, True, node),
                _constant(graph, None, node)])
            pool.output().setType(node.output().type())
            pool.insertBefore(node)
            node.output().replaceAllUsesWith(pool.output())
        elif kind == "prim::Constant" and node.output().type().kind() == "TensorType":
            t = node.t("value")
            if t.is_floating_point() and t.dtype != torch.float64:
                node.output().replaceAllUsesWith(_constant(graph, t.double(), node))
    torch._C._jit_pass_dce(graph)


class _Placeholder(nn.Module):
    """Stands for one module of the script: hooks on it see that module's output."""

    def __init__(self, kind: str = ""):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return self.kind


class ScriptedModel(nn.Module):
    """A TorchScript model with the module tree of the script as hookable placeholders.

    Forward hooks on a placeholder see the output of that module in the script (once per call).
    `positive_linear()` switches to the gradient probe's version of the graph."""

    def __init__(self, script: torch.jit.ScriptModule):
        super().__init__()
        object.__setattr__(self, "script", script)  # not a child: its modules are placeholders
        self._functions: dict = {}
        self._linear_script = None
        self.linear = False
        self._paths = ModulePaths(script)
        kinds = dict(self._paths.kinds)
        graph = script.inlined_graph
        for node in graph.nodes():  # calls whose module named_modules() does not list
            path_ = self._paths(node)
            parts = path_.split(".") if path_ else []
            for i in range(1, len(parts) + 1):
                kinds.setdefault(".".join(parts[:i]), "")
        for name in sorted((n for n in kinds if n), key=lambda n: n.count(".")):
            parent, _, leaf = name.rpartition(".")
            owner = self.get_submodule(parent) if parent else self
            owner.add_module(leaf, _Placeholder(kinds[name]))

    def _apply(self, fn, recurse=True):
        self.script._apply(fn)
        self._functions.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self.script.train(mode)
        return super().train(mode)

    def _function(self, modules: tuple[str, ...]):
        """The graph function returning (output, *outputs of each call of `modules`)."""
        key = (modules, self.linear)
        if key not in self._functions:
            script = self._probe_script() if self.linear else self.script
            graph = script.inlined_graph
            layout, values = [], []
            for module in modules:
                for outputs in module_calls(graph, module, self._paths):
                    layout.append((module, len(outputs)))
                    values.extend(outputs)
            if self.linear:
                _tuple_return(graph, values)
                positive_linear(graph, script)
            else:
                _tuple_return(graph, [graph.return_node().inputsAt(0)] + values)
            fn = torch._C._create_function_from_graph("unitscope_tapped", graph)
            self._functions[key] = (fn, layout, script)
        return self._functions[key]

    def check_recordable(self, modules: list[str]) -> None:
        """Raise ValueError naming the first module whose output the graph cannot return."""
        self._function(tuple(modules))

    def _probe_script(self) -> torch.jit.ScriptModule:
        """A float64 copy of the script (copy.deepcopy would make its parameters non-leaves)."""
        if self._linear_script is None:
            buffer = io.BytesIO()
            torch.jit.save(self.script, buffer)
            buffer.seek(0)
            self._linear_script = torch.jit.load(buffer, map_location="cpu").double().eval()
        return self._linear_script

    @contextlib.contextmanager
    def positive_linear(self):
        """Within it, forward runs the gradient probe's graph (float64 input; returns None)."""
        self.linear = True
        try:
            yield self
        finally:
            self.linear = False

    def forward(self, x: torch.Tensor):
        named = dict(self.named_modules())
        hooked = tuple(name for name, m in named.items()
                       if name and (m._forward_hooks or m._forward_pre_hooks))
        fn, layout, script = self._function(hooked)
        result = fn(script._c, x)  # always a tuple (see _tuple_return)
        out, rest = (None, list(result)) if self.linear else (result[0], list(result[1:]))
        for module, n in layout:
            value, rest = rest[:n], rest[n:]
            named[module](value[0] if n == 1 else tuple(value))
        return out


def load_torchscript(path: str | os.PathLike) -> ScriptedModel:
    """Load a TorchScript file (torch.jit.save of a scripted or traced model) onto the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TorchScript file {str(path)!r} does not exist")
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise ValueError(f"{str(path)!r} is not a TorchScript file (torch.jit.save of a scripted "
                         f"or traced model): {str(e).splitlines()[0]}") from None
    model = ScriptedModel(script.eval())
    if not any(True for name, _ in model.named_modules() if name):
        raise ValueError(f"TorchScript file {str(path)!r} keeps no module structure (frozen with "
                         f"torch.jit.freeze?), so no layer can be named; save the scripted or "
                         f"traced model before freezing it")
    return model
