"""Exact receptive fields of every feature position of any layer, found two independent ways:
the walk (`walk.py`), the probe (`probe.py`) and their comparison (`compare.py`); `fields.py`
holds the field itself and `ops.py` what both read of a torch call.

**The walk** (`trace_fields`) follows one real forward pass op by op in a TorchFunctionMode (it sees
`F.conv2d` of a Python model and `aten.conv2d` of a torch.export model alike) and carries, for
every position of every feature map, two boxes in input pixels (y0, x0, y1, x1; end-exclusive):

- the *support*: the bounding box of the image pixels that can change that position;
- the *display box*: the same field extended into the padding (a window reaching past the border
  is drawn padded, never shifted) — the box patches are cut to.

Ops with a rule: convolution (any stride, padding, dilation, groups; transposed), pooling (max,
average, LP; `ceil_mode`; adaptive), padding (constant, reflect, replicate, circular), upsampling
(nearest, nearest-exact, bilinear, bicubic, area; `align_corners`), spatial slicing, reductions
over the spatial axes, elementwise ops (with broadcasting), and channel concatenation. Every rule
acts on the two spatial axes separately, as a list of source positions per output position, so a
field needs not be affine. Where branches meet (addition, concatenation) a position's box is the
union of its branches' boxes; a unit of a concatenation therefore gets the union field of all
branches. Normalisations are treated as their affine part (statistics as constants, as batch
norm in eval mode is). Any other op makes the field *unknown* (with the op's name).

**The probe** (`probe_supports`) needs no rules: it makes the network linear and positive (every
convolution an all-ones kernel, max-pooling an average over the same window, activations and
normalisations the identity, float64) and feeds it threshold images, 1 on the rows above row r (or
below, or the columns left/right of a column). A position's output is then positive exactly when
its support reaches past the threshold, so counting the zero outputs over all thresholds gives
every position's support box at once, in 2·(H+W) forward passes and no backward pass.

`layer_fields` puts them together: where the walk knows a layer, its support must equal the
probe's at every position (else a one-line error naming the layer, the position and both boxes);
where the walk does not, the probe's boxes are the field (display box = support)."""
from __future__ import annotations

from .boxes import EMPTY, Boxes
from .compare import FieldMismatch, LayerField, feature_sizes, layer_fields
from .layout import LAYOUTS, LayerView, find_view
from .probe import probe_elements
from .walk import Traced, Unknown, trace_tensors

__all__ = ["EMPTY", "Boxes", "FieldMismatch", "LAYOUTS", "LayerField", "LayerView", "Traced",
           "Unknown", "feature_sizes", "find_view", "layer_fields", "probe_elements",
           "trace_tensors"]
