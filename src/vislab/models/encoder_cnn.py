"""A U-Net-encoder-like CNN classifier: the network of the deformable-vs-regular experiment (SPEC §4).

Stages of 3×3 conv + BN + ReLU (the contracting path of U-Net, Ronneberger et al. 2015), a 2×2
max-pool between stages, then a global pool and three dense layers to the logits. With the
default widths ``(32, 64, 128, 256, 256)`` and ``(2, 2, 2, 2, 3)`` convs per stage it has 11
3×3 convs and 4 pools, so a 64×64 input reaches 4×4 in the last stage.

Every 3×3 conv is a plain ``nn.Conv2d`` named ``features.stage{s}.conv{c}`` (1-based), listed in
forward order by :func:`conv_names` — e.g. ``conv_names(model)[:2]`` are "the first two convs" to
make deformable with ``vislab.layers.convert_to_deformable``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from vislab.models._registry import register_model


def _conv_stage(in_channels: int, width: int, n_convs: int) -> nn.Sequential:
    """``n_convs`` × (3×3 conv, BN, ReLU); the conv has no bias (BN follows)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i in range(1, n_convs + 1):
        layers[f"conv{i}"] = nn.Conv2d(c, width, kernel_size=3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(width)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        c = width
    return nn.Sequential(layers)


class EncoderCNN(nn.Module):
    """U-Net-encoder-like classifier.

    Args:
        in_channels: channels ``C`` of the input.
        num_classes: number of logits (labels).
        widths: output channels of each stage.
        convs_per_stage: 3×3 convs in each stage (same length as ``widths``).
        hidden: widths of the two hidden dense layers (the third dense layer gives the logits).
        dropout: dropout before each of the last two dense layers.
        pool: ``"avg"`` or ``"max"``, the global pooling of the last feature map.

    Shapes: ``Tensor[B, C, H, W]`` → logits ``Tensor[B, num_classes]``; ``H`` and ``W`` must be at
    least ``2 ** (len(widths) - 1)`` (one pixel left after the last max-pool).
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10,
                 widths: Sequence[int] = (32, 64, 128, 256, 256),
                 convs_per_stage: Sequence[int] = (2, 2, 2, 2, 3),
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.2, pool: str = "avg") -> None:
        super().__init__()
        widths, convs_per_stage, hidden = tuple(widths), tuple(convs_per_stage), tuple(hidden)
        if not (isinstance(in_channels, int) and in_channels > 0):
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not widths or any(not isinstance(w, int) or w <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if len(convs_per_stage) != len(widths) or any(not isinstance(k, int) or k <= 0 for k in convs_per_stage):
            raise ValueError(f"convs_per_stage must hold one positive int per stage ({len(widths)} stages), "
                             f"got {convs_per_stage!r}")
        if len(hidden) != 2 or any(not isinstance(h, int) or h <= 0 for h in hidden):
            raise ValueError(f"hidden must be two positive ints (the hidden dense layers), got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        c = in_channels
        for s, (w, k) in enumerate(zip(widths, convs_per_stage), start=1):
            if s > 1:
                stages[f"pool{s - 1}"] = nn.MaxPool2d(2)
            stages[f"stage{s}"] = _conv_stage(c, w, k)
            c = w
        self.features = nn.Sequential(stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c, hidden[0]), nn.BatchNorm1d(hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden[1], num_classes),
        )
        self.min_size = 2 ** (len(widths) - 1)
        # names of the 3×3 convs in forward order, fixed at construction so that they stay valid
        # after convert_to_deformable replaces those modules (and adds offset convs of its own)
        self._conv_names = [f"features.stage{s}.conv{i}" for s, k in enumerate(convs_per_stage, start=1)
                            for i in range(1, k + 1)]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-out) init for convs, unit BN, default ``nn.Linear`` init (torchvision ResNet's)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def conv_names(self) -> list[str]:
        """Qualified names of the 3×3 convs, in forward order (``features.stage1.conv1`` first)."""
        return list(self._conv_names)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W]`` → logits ``Tensor[B, num_classes]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input Tensor[B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"input height and width must be at least {self.min_size} "
                             f"(one pixel after the last max-pool), got {tuple(x.shape[-2:])}")
        f = self.features(x)  # (B, widths[-1], H / 2^(stages-1), W / 2^(stages-1))
        return self.head(self.pool(f))  # (B, num_classes)


def conv_names(model: nn.Module) -> list[str]:
    """Names of a model's 3×3 convs in forward order.

    For :class:`EncoderCNN` (or any model with a ``conv_names()`` method) the names fixed at
    construction, still valid after conversion to deformable; otherwise the ``nn.Conv2d`` modules
    with a 3×3 kernel in registration order (which is forward order for sequential models).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    method = getattr(model, "conv_names", None)
    if callable(method):
        return list(method())
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)]


@register_model("encoder_cnn")
def encoder_cnn(*, in_channels: int = 3, num_classes: int = 80, **kwargs) -> EncoderCNN:
    """The experiment's network: 11 3×3 convs (widths 32–256), 4 max-pools, 3 dense layers."""
    return EncoderCNN(in_channels=in_channels, num_classes=num_classes, **kwargs)
