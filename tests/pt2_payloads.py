"""Hostile .pt2 files for the tests: a clean export whose parts are swapped for ones that run code
when torch.export.load reads them. Each payload writes a marker file; with `valid=True` it also
gives back the value the part should hold, so the file still loads and runs under a trusting
reader (which proves the payload is live)."""
from __future__ import annotations

import io
import json
import operator
import pickle
import zipfile

import torch
from torch import nn
from torch.export import Dim

PARTS = ("sample_inputs", "pickled_weight", "pickled_constant", "opaque_constant",
         "shape_expression", "guard_code")


class Net(nn.Module):
    """A conv, a ReLU and a lifted tensor constant (so the archive has a constants entry)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 3, stride=2)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)) * torch.tensor(2.0))


class _Exec:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class _Payload:
    """Unpickles to `value` after running `code` (or to None when value is None)."""

    def __init__(self, code: str, value=None, valid: bool = True):
        self.code, self.value, self.valid = code, value, valid

    def __reduce__(self):
        if not self.valid:
            return exec, (self.code,)
        return operator.itemgetter(1), ((_Exec(self.code), self.value),)


def touch(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def clean(path, size: int = 32) -> str:
    torch.manual_seed(0)
    ep = torch.export.export(Net().eval(), (torch.zeros(2, 3, size, size),),
                             dynamic_shapes={"x": {0: Dim("batch")}})
    torch.export.save(ep, str(path))
    return str(path)


def _rewrite(src: str, dst: str, change) -> None:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    root = next(iter(members)).split("/", 1)[0]
    files = {n.split("/", 1)[1]: v for n, v in members.items()}
    change(files)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(f"{root}/{name}", data)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def hostile(src: str, dst, part: str, marker, valid: bool = True) -> str:
    """A copy of the clean export `src` whose `part` (one of PARTS) carries a payload."""
    code = touch(marker)
    b = "__import__('builtins')"
    run = f"{b}.exec({b}.bytes.fromhex('{code.encode().hex()}').decode())"

    def pickled(files, kind: str):
        config_name = f"data/{kind}/model_{kind}_config.json"
        config = json.loads(files[config_name])
        fqn, meta = next(iter(config["config"].items()))
        member = f"data/{kind}/{meta['path_name']}"
        tm = meta["tensor_meta"]
        dtype = torch.float32
        value = torch.frombuffer(bytearray(files[member]), dtype=dtype).reshape(
            [s["as_int"] for s in tm["sizes"]]).clone() if files[member] else torch.zeros(
            [s["as_int"] for s in tm["sizes"]])
        meta["use_pickle"] = True
        if meta.get("is_param"):
            value = nn.Parameter(value, requires_grad=tm["requires_grad"])
        files[member] = _saved(_Payload(code, value, valid))
        files[config_name] = json.dumps(config).encode()

    def change(files):
        if part == "sample_inputs":
            real = torch.load(io.BytesIO(files["data/sample_inputs/model.pt"]), weights_only=True)
            files["data/sample_inputs/model.pt"] = _saved(_Payload(code, real, valid))
        elif part == "pickled_weight":
            pickled(files, "weights")
        elif part == "pickled_constant":
            pickled(files, "constants")
        elif part == "opaque_constant":
            name = "data/constants/model_constants_config.json"
            config = json.loads(files[name])
            config["config"]["opaque"] = {"path_name": "opaque_obj_0", "is_param": False,
                                          "use_pickle": True, "tensor_meta": None}
            files[name] = json.dumps(config).encode()
            files["data/constants/opaque_obj_0"] = pickle.dumps(_Payload(code, 0, valid))
        elif part == "shape_expression":
            text = files["models/model.json"].decode()
            expr = "Symbol('s77', positive=True, integer=True)"
            assert expr in text
            inject = f"({run} or {expr})" if valid else run
            files["models/model.json"] = text.replace(json.dumps(expr)[1:-1],
                                                      json.dumps(inject)[1:-1]).encode()
        elif part == "guard_code":
            program = json.loads(files["models/model.json"])
            program["guards_code"] = [f"({run} or True)" if valid else run]
            files["models/model.json"] = json.dumps(program).encode()
        else:
            raise ValueError(part)

    _rewrite(src, str(dst), change)
    return str(dst)
