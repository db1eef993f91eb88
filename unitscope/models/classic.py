"""The plain conv/ReLU/max-pool networks of the paper's era, built from configuration lists in
the manner of torchvision, with state_dict keys equal to torchvision's (`features.N`,
`classifier.N`) so that its published ImageNet weights load strictly.

ZF-net follows Zeiler & Fergus 2014, Fig. 3: 224×224 input; conv1 7×7/2 (96) -> 110×110;
3×3/2 max-pool -> 55×55; conv2 5×5/2 (256) -> 26×26; pool -> 13×13; conv3-5 3×3 (384, 384, 256);
pool -> 6×6; fc6, fc7 4096; 1000 classes. Local contrast normalisation follows pool1 and pool2."""
from __future__ import annotations

from torch import nn

from .configs import ALEXNET, VGG16, ZFNET

def make_features(cfg: list[tuple]) -> nn.Sequential:
    """The convolutional part from a configuration list."""
    layers: list[nn.Module] = []
    channels = 3
    for item in cfg:
        if item[0] == "C":
            _, out, k, s, p = item
            layers += [nn.Conv2d(channels, out, k, s, p), nn.ReLU(inplace=True)]
            channels = out
        elif item[0] == "M":
            _, k, s, p = item
            layers.append(nn.MaxPool2d(k, s, p))
        else:
            layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
    return nn.Sequential(*layers)


class ClassicNet(nn.Module):
    """features -> adaptive average pool -> classifier (dropout, fc, ReLU, dropout, fc, ReLU, fc)."""

    def __init__(self, cfg: list[tuple], pool: int, hidden: int, num_classes: int = 1000,
                 dropout_first: bool = True):
        super().__init__()
        self.features = make_features(cfg)
        channels = [c[1] for c in cfg if c[0] == "C"][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        fc_in = channels * pool * pool
        if dropout_first:  # AlexNet / ZF-net order: dropout before each hidden fc
            head = [nn.Dropout(0.5), nn.Linear(fc_in, hidden), nn.ReLU(inplace=True),
                    nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                    nn.Linear(hidden, num_classes)]
        else:  # VGG order: fc, ReLU, dropout
            head = [nn.Linear(fc_in, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                    nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                    nn.Linear(hidden, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def zfnet(num_classes: int = 1000) -> ClassicNet:
    return ClassicNet(ZFNET, pool=6, hidden=4096, num_classes=num_classes)


def alexnet(num_classes: int = 1000) -> ClassicNet:
    return ClassicNet(ALEXNET, pool=6, hidden=4096, num_classes=num_classes)


def vgg16(num_classes: int = 1000) -> ClassicNet:
    return ClassicNet(VGG16, pool=7, hidden=4096, num_classes=num_classes, dropout_first=False)
