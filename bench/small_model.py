"""A small CNN for the scale benchmark: four stages of four conv-BN-ReLU (32, 48, 64, 64
channels; the last two stages are the benchmarked layers) at 192 px, cheap enough that 20,000
images run in minutes on two cores, heavy enough that the forward pass, not decoding, decides
the cost of an image."""
from __future__ import annotations

from torch import nn


def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, 1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.s1, self.s2 = stage(3, 32, 2), stage(32, 48, 2)
        self.s3, self.s4 = stage(48, 64, 2), stage(64, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.s4(self.s3(self.s2(self.s1(x))))
        return self.fc(self.pool(x).flatten(1))


def small() -> Small:
    return Small()
