"""The small CNN of SPEC §1: conv32-pool-conv64-pool-conv64-pool-dense128-out."""

from __future__ import annotations

from torch import Tensor, nn

from vislab.models._registry import register_model


class SmallCNN(nn.Module):
    """Three 3×3 conv + max-pool stages, a 128-unit dense layer and a classifier.

    Input ``Tensor[B, in_channels, H, W]`` → logits ``Tensor[B, num_classes]``. Before the dense layer
    the last feature map is average-pooled to ``pool_size × pool_size`` and flattened (Keras' Flatten
    of the seed keeps this spatial layout; ``pool_size=1`` is a global average pool), so the model
    works at any input size.
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, widths=(32, 64, 64),
                 hidden: int = 128, dropout: float = 0.3, pool_size: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))  # (B, num_classes)


@register_model("small_cnn")
def small_cnn(*, in_channels: int = 3, num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, **kwargs)
