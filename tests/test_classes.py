"""The class weights of the layer before a classifier: found numerically (the model's output must
equal its final Linear applied to the layer's global average), never assumed from the names."""
import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.classes import class_name, class_weights, classifier_layers, write_class_weights


class Head(nn.Module):
    """conv -> ReLU -> global average -> Linear(4 units -> 3 classes), with hand-set class weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            # unit u votes most for class (u % 3), then (u + 1) % 3, least for (u + 2) % 3
            w = torch.zeros(3, 4)
            for u in range(4):
                w[u % 3, u], w[(u + 1) % 3, u], w[(u + 2) % 3, u] = 2.0 + u, 1.0, -1.0 - u
            self.fc.weight.copy_(w)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(self.conv(x)), 1), 1))


def test_the_layer_before_the_classifier_gets_its_weight_columns_and_the_others_none():
    model = Head().eval()
    found = classifier_layers(model, {"act": "relu", "pre": "conv"}, "fc", 16)
    # the ReLU's output feeds the average and the Linear; the conv's (signed, before the ReLU) does not
    assert set(found) == {"act"}
    assert torch.equal(found["act"], model.fc.weight)

    table = class_weights(found, top=3)
    assert len(table) == 4 * 3
    for u in range(4):
        rows = table[table.unit == u].sort_values("rank")
        assert rows.class_index.tolist() == [u % 3, (u + 1) % 3, (u + 2) % 3]
        assert rows.weight.tolist() == [2.0 + u, 1.0, -1.0 - u]
        assert rows.class_name.tolist() == [f"class {c}" for c in rows.class_index]


def test_a_model_whose_output_is_not_the_average_through_its_linear_has_no_class_weights():
    class TwoLinears(Head):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(3, 3)

        def forward(self, x):
            return self.out(torch.relu(super().forward(x)))

    assert classifier_layers(TwoLinears().eval(), {"act": "relu"}, "out", 16) == {}


def test_imagenet_class_names_for_a_thousand_classes():
    assert class_name(0, 1000) == "tench"
    assert class_name(999, 1000) == "toilet paper"
    assert class_name(3, 10) == "class 3"


def test_resnet18_layer4_feeds_its_classifier_and_layer3_does_not(tmp_path):
    out = tmp_path / "classes.parquet"
    written = write_class_weights({"name": "resnet18", "weights": "none", "seed": 3},
                                  ["layer3", "layer4"], out, top=2)
    table = pd.read_parquet(out)
    pd.testing.assert_frame_equal(table, written)
    assert set(table.layer) == {"layer4"} and table.unit.nunique() == 512
    # brute force: the same seeded network's fc weights, column by column
    from unitscope.models import MODELS, build_model

    w = dict(build_model(MODELS["resnet18"], "none", 3).named_modules())["fc"].weight.detach().numpy()
    for u in (0, 17, 511):
        rows = table[table.unit == u].sort_values("rank")
        expected = np.argsort(-w[:, u])[:2]
        assert rows.class_index.tolist() == expected.tolist()
        np.testing.assert_allclose(rows.weight, w[expected, u])
        assert rows.class_name.iloc[0] == class_name(int(expected[0]), 1000) != f"class {expected[0]}"
