"""U-Net (Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597) with configurable depth and widths.

Encoder: one double conv (3×3 conv → [BN] → ReLU, twice) per width, each followed by 2×2 max
pooling; a bottleneck double conv; decoder: 2×2 transposed conv (or bilinear upsampling + 1×1
conv) that halves the channels, concatenation with the encoder map of the same level, double conv;
a 1×1 conv head. With ``padding=1`` ("same" 3×3 convs) the output has the input's size, which must
be divisible by ``2**depth``; with ``padding=0`` (the paper's valid convs) skips are centre-cropped
and a 572×572 input gives a 388×388 output.
"""

from __future__ import annotations

from torch import Tensor, nn

from vislab.models._registry import register_model


class DoubleConv(nn.Sequential):
    """``(conv k×k → [BatchNorm] → ReLU) × 2``: ``Tensor[B, C_in, H, W] → Tensor[B, C_out, H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: int = 1, batch_norm: bool = True,
                 kernel_size: int = 3) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, kernel_size, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def center_crop(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """The central ``hw`` window of ``Tensor[B, C, H, W]`` (U-Net skips with valid convolutions)."""
    h, w = x.shape[-2:]
    top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
    return x[..., top:top + hw[0], left:left + hw[1]]


class UNet(nn.Module):
    """U-Net: ``Tensor[B, in_channels, H, W] → Tensor[B, num_classes, H', W']`` logits.

    Args:
        in_channels: input channels.
        num_classes: output channels of the 1×1 head.
        widths: channels of the encoder levels; the depth (number of poolings) is ``len(widths)``.
        bottleneck: channels of the bottleneck (default ``2 × widths[-1]``).
        padding: 1 keeps sizes ("same" convs), 0 is the paper's valid convs with cropped skips.
        batch_norm: BatchNorm after every conv (the convs then have no bias).
        up_mode: ``"transpose"`` (2×2 transposed conv, stride 2) or ``"bilinear"`` (upsampling + 1×1 conv).
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 1, widths: tuple[int, ...] = (64, 128, 256, 512),
                 bottleneck: int | None = None, padding: int = 1, batch_norm: bool = True,
                 up_mode: str = "transpose") -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if padding not in (0, 1):
            raise ValueError(f"padding must be 1 (same) or 0 (valid, as in the paper), got {padding!r}")
        if up_mode not in ("transpose", "bilinear"):
            raise ValueError(f"up_mode must be 'transpose' or 'bilinear', got {up_mode!r}")
        self.widths, self.padding = widths, padding
        bottleneck = 2 * widths[-1] if bottleneck is None else bottleneck
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoders.append(DoubleConv(c, w, padding=padding, batch_norm=batch_norm))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(c, bottleneck, padding=padding, batch_norm=batch_norm)
        c = bottleneck
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            if up_mode == "transpose":
                self.ups.append(nn.ConvTranspose2d(c, w, kernel_size=2, stride=2))
            else:
                self.ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                              nn.Conv2d(c, w, kernel_size=1)))
            self.decoders.append(DoubleConv(2 * w, w, padding=padding, batch_norm=batch_norm))
            c = w
        self.head = nn.Conv2d(c, num_classes, kernel_size=1)

    def output_size(self, n: int) -> int:
        """Output length for input length ``n``; raises ``ValueError`` when ``n`` does not fit the net."""
        shrink = 0 if self.padding else 4  # two valid 3×3 convs per double conv
        size = n
        for level in range(len(self.widths)):
            size -= shrink
            if size < 2 or size % 2:
                raise ValueError(self._size_message(n, f"level {level + 1} receives {size + shrink} and "
                                                       f"pools an odd or too small map ({size})"))
            size //= 2
        size -= shrink
        if size < 1:
            raise ValueError(self._size_message(n, f"the bottleneck map shrinks to {size}"))
        for level in reversed(range(len(self.widths))):
            size = 2 * size - shrink
            if size < 1:
                raise ValueError(self._size_message(n, f"the decoder at level {level + 1} shrinks the map to {size}"))
        return size

    def _size_message(self, n: int, why: str) -> str:
        rule = (f"divisible by {2 ** len(self.widths)}" if self.padding
                else "such that every pooled map is even after its valid convs (e.g. 572)")
        return f"UNet with {len(self.widths)} levels cannot take a size of {n}: {why}; use sizes {rule}"

    def forward(self, x: Tensor) -> Tensor:
        for n in x.shape[-2:]:
            self.output_size(int(n))
        skips = []
        for enc in self.encoders:
            x = enc(x)  # (B, w_l, H_l, W_l)
            skips.append(x)
            x = self.pool(x)  # (B, w_l, H_l/2, W_l/2)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x)  # (B, w_l, 2H, 2W)
            x = dec(_cat(center_crop(skip, x.shape[-2:]), x))  # (B, w_l, H_l', W_l')
        return self.head(x)  # (B, num_classes, H', W')


def _cat(skip: Tensor, x: Tensor) -> Tensor:
    import torch

    return torch.cat([skip, x], dim=1)  # (B, 2·w_l, H, W)


@register_model("unet")
def unet(*, in_channels: int = 3, num_classes: int = 1, widths: tuple[int, ...] = (64, 128, 256, 512),
         **kwargs) -> UNet:
    """U-Net, by default the paper's widths 64/128/256/512 with a 1024-channel bottleneck."""
    return UNet(in_channels=in_channels, num_classes=num_classes, widths=widths, **kwargs)
