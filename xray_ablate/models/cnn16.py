"""The study's 16-layer CNN (Keras counting: 6 conv + 6 pool + flatten + dense + dropout + dense)."""

from __future__ import annotations

from torch import nn

from xray_ablate.errors import UserError

CHANNELS = (64, 64, 128, 128, 256, 256)
POOLS = len(CHANNELS)


def _conv_blocks(ceil_mode: bool = False) -> nn.Sequential:
    layers, previous = [], 1
    for width in CHANNELS:
        layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2, ceil_mode=ceil_mode)]
        previous = width
    return nn.Sequential(*layers)


def _head(in_features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 512), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(512, num_classes))


class CNN16(nn.Module):
    """Six 3x3 conv (64, 64, 128, 128, 256, 256) + ReLU + 2x2 max-pool, flatten, 512, dropout 0.2."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        side = image_size // 2**POOLS
        if side < 1:
            raise UserError(
                f"cnn16 needs image_size >= {2**POOLS} (six 2x2 poolings), got {image_size}; "
                "use backbone=cnn16_gap for smaller images"
            )
        self.features = _conv_blocks()
        self.head = _head(CHANNELS[-1] * side * side, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class CNN16GAP(nn.Module):
    """cnn16 with ceil-mode pooling and global average pooling before the head: any image size."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        self.features = nn.Sequential(_conv_blocks(ceil_mode=True), nn.AdaptiveAvgPool2d(1))
        self.head = _head(CHANNELS[-1], num_classes)

    def forward(self, x):
        return self.head(self.features(x))
