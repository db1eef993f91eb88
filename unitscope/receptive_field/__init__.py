"""Exact receptive fields of every element of any layer, found two independent ways: the walk
(`walk.py`) and the probe (`probe.py`), compared in `compare.py`; `boxes.py` holds the per-element
boxes, `layout.py` how a layer keeps its channels and positions, `fields.py` and `ops.py` what both
read of a torch call.

**The walk** (`trace_tensors`) follows one real forward pass op by op in a TorchFunctionMode (it
sees `F.conv2d` of a Python model and `aten.conv2d` of a torch.export model alike) and carries, for
every element of every tensor that depends on the image, two boxes in input pixels (y0, x0, y1,
x1; end-exclusive): the *support* (the bounding box of the pixels that can change it) and the
*display box* (the same field extended into the padding: a window reaching past the border is
drawn padded, never shifted). Each comes in three kinds: theoretical, local (global gates left
out) and the token's cell (attention's mixing left out). The rules are listed in `walk.py`; any
other op makes the field *unknown* (with the op's name).

**The probe** (`probe_elements`, `verify_elements`) needs no rules for positions: it runs the
network as a network of "or"s on 0/1 values in float32 and feeds it threshold images, 1 on the rows
above row r (or below, or the columns left/right of a column). An element's output is 1 exactly
when its support reaches past the threshold: 2·(H+W) images measure every support, and the two
thresholds at each edge of a claimed box check it.

`layer_fields` puts them together: where the walk knows a layer, its support must equal the
probe's at every position for every kind (else a one-line error naming the layer, the kind, the
position and both boxes); where it does not, the probe's boxes are the field."""
from __future__ import annotations

from .boxes import EMPTY, Boxes
from .compare import FieldMismatch, LayerField, feature_sizes, layer_fields
from .layout import LAYOUTS, LayerView, find_view
from .probe import probe_elements, verify_elements
from .walk import Traced, Unknown, trace_tensors

__all__ = ["EMPTY", "Boxes", "FieldMismatch", "LAYOUTS", "LayerField", "LayerView", "Traced",
           "Unknown", "feature_sizes", "find_view", "layer_fields", "probe_elements",
           "trace_tensors", "verify_elements"]
