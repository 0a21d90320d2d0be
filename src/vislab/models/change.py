"""The change-detection network: two grayscale images in, ``(dx, dy, log s)`` and the change type out.

The convention (the same in the whole project): ``img2`` is ``img1`` scaled by ``s`` about the image
centre ``c``, then shifted by ``t = (dx, dy)`` pixels (x right, y down); a point ``p`` of ``img1``
appears at ``s·(p − c) + c + t`` in ``img2``. Change types: ``none | shift | scale | both``.

Two architectures (``arch``), both written here:

* ``"stacked"`` — HomographyNet (DeTone et al. 2016) style: the two images are the two channels of one
  input, a VGG-like stack of 3×3 conv + BatchNorm + ReLU pairs with max-pooling, flattened (the
  position of each feature is kept) into a fully connected layer.
* ``"siamese"`` — one shared encoder per image (stride 4), a local correlation layer (FlowNetC /
  PWC-Net style: the dot product of img1's feature at ``x`` with img2's at ``x + d`` for every
  displacement ``d`` within ``±max_displacement`` feature cells) together with two coordinate channels
  (a scaling is a displacement that grows with the distance from the centre), then a small strided CNN,
  flattened into a fully connected layer.

Both end in the same heads: ``reg`` regresses ``(dx / max_shift, dy / max_shift, log s / log max_scale)``
and ``cls`` gives the four change-type logits. :meth:`ChangeNet.forward` returns ``Tensor[B, 7]``
(3 normalised regressions, 4 logits); :meth:`ChangeNet.decode` turns that into pixels and a scale.
Each image is standardised (own mean and standard deviation) inside ``forward``, so brightness and
contrast changes do not matter and the caller passes images in any range.

Measured choice (``arch="stacked"`` is the default). Both trained on the same embedded pairs (64 px,
max shift 8 px, min shift 2 px, scale in [1/1.3, 1.3], min 1.08; 3000 training pairs from 11 photographs,
batch 64, AdamW with a one-cycle schedule peaking at 2e-3, the flip/transpose/swap augmentation,
seed 0), evaluated after each epoch on 512 pairs from 3 held-out photographs; the cost is one
forward + backward pass per pair, single CPU thread, batch 32:

===========================  ========  =====================  ===========================  ===========
arch (widths)                params    type acc, epoch 1 → 6  trans / scale median, ep. 6  ms per pair
===========================  ========  =====================  ===========================  ===========
stacked (16, 16, 32, 64)     343 k     0.49 → 0.77            0.45 px / 0.90 % (gated)     1.5
siamese (16, 32, 32), d = 5  347 k     0.25 (epoch 1)         —                            7.9
===========================  ========  =====================  ===========================  ===========

At equal parameters the correlation layer makes the siamese network five times as expensive (121
displacement products per position and their backward pass, against dense 3×3 convolutions that
oneDNN runs efficiently); at an equal CPU budget (five stacked epochs against one siamese epoch) the
stacked network was at 0.78 type accuracy and the siamese one had not left chance (its type head still
predicted a single class, translation median 1.7 px). The siamese network stays available (``arch``)
for GPUs, where the correlation is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHANGE_TYPES = ("none", "shift", "scale", "both")
ARCHS = ("stacked", "siamese")


def _conv_bn(cin: int, cout: int, *, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def standardize(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Each image of ``Tensor[B, C, H, W]`` to zero mean and unit standard deviation (per sample, channel)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + eps)


def local_correlation(f1: Tensor, f2: Tensor, max_displacement: int) -> Tensor:
    """Correlation volume ``c[b, k, y, x] = <f1[b, :, y, x], f2[b, :, y + dy_k, x + dx_k]> / C``.

    Args:
        f1, f2: ``Tensor[B, C, H, W]``.
        max_displacement: ``d``; displacements ``(dx, dy)`` in ``[-d, d]²``, row-major (dy outer, dx inner).
    Returns:
        ``Tensor[B, (2d + 1)², H, W]``; positions of ``f2`` outside the map count as zero features.

    One product of shifted maps per displacement: on the CPU this loop was 3× faster (forward + backward)
    than gathering all displacements at once with ``unfold`` and one ``einsum``.
    """
    if f1.shape != f2.shape or f1.ndim != 4:
        raise ValueError(f"f1 and f2 must be Tensor[B, C, H, W] of one shape, got {tuple(f1.shape)} and "
                         f"{tuple(f2.shape)}")
    d = int(max_displacement)
    if d < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
    B, C, H, W = f1.shape
    padded = F.pad(f2, (d, d, d, d))  # (B, C, H + 2d, W + 2d)
    out = [(f1 * padded[:, :, dy:dy + H, dx:dx + W]).sum(1) for dy in range(2 * d + 1) for dx in range(2 * d + 1)]
    return torch.stack(out, dim=1) / C  # (B, (2d+1)², H, W)


def coordinate_channels(B: int, H: int, W: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``Tensor[B, 2, H, W]``: x and y of each cell centre, in [-1, 1] (0 at the image centre)."""
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, y
    return grid[None].expand(B, 2, H, W)


class StackedTrunk(nn.Module):
    """HomographyNet-style trunk: ``Tensor[B, 2, S, S]`` → ``Tensor[B, widths[-1] · (S / 2^len(widths))²]``.

    A strided 3×3 conv (2 → widths[0]), then per width a 3×3 conv pair with max-pooling after every
    stage but the first (the strided stem already halved the size).
    """

    def __init__(self, *, image_size: int, widths: Sequence[int] = (32, 32, 64, 128), coords: bool = False) -> None:
        super().__init__()
        self.coords = coords
        layers: list[nn.Module] = [_conv_bn(4 if coords else 2, widths[0], stride=2)]
        cin = widths[0]
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [_conv_bn(cin, w), _conv_bn(w, w)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.side = image_size // 2 ** len(widths)
        if self.side < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(widths)} stages")
        self.out_features = cin * self.side * self.side

    def forward(self, x: Tensor) -> Tensor:
        if self.coords:  # CoordConv: x and y of every pixel as two more channels
            B, _, H, W = x.shape
            x = torch.cat([x, coordinate_channels(B, H, W, device=x.device, dtype=x.dtype)], dim=1)  # (B, 4, H, W)
        return self.body(x).flatten(1)  # (B, C · side²)


class SiameseTrunk(nn.Module):
    """Shared encoder (stride 4 or 8) per image, local correlation with coordinates, strided CNN, flattened.

    ``Tensor[B, 2, S, S]`` → ``Tensor[B, head_width · (S / 16)²]``. ``stride`` is the feature stride at which
    the correlation is computed (8: a quarter of the positions and about a quarter of the displacements).
    """

    def __init__(self, *, image_size: int, widths: Sequence[int] = (16, 32, 32), max_displacement: int = 6,
                 head_width: int = 64, stride: int = 4) -> None:
        super().__init__()
        if stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {stride}")
        w1, w2, w3 = widths
        layers = [_conv_bn(1, w1, kernel=5, stride=2), _conv_bn(w1, w2, stride=2)]
        if stride == 8:
            layers.append(_conv_bn(w2, w2, stride=2))
        self.encoder = nn.Sequential(*layers, _conv_bn(w2, w3), nn.Conv2d(w3, w3, 3, padding=1))
        self.stride = stride
        self.max_displacement = int(max_displacement)
        k = (2 * self.max_displacement + 1) ** 2
        head: list[nn.Module] = [_conv_bn(k + 2, head_width // 2, kernel=1),
                                 _conv_bn(head_width // 2, head_width, stride=2)]
        if stride == 4:
            head.append(_conv_bn(head_width, head_width, stride=2))
        self.head = nn.Sequential(*head)
        self.side = image_size // 16
        if self.side < 1:
            raise ValueError(f"image_size {image_size} is too small for the siamese trunk (stride 16)")
        self.out_features = head_width * self.side * self.side

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        feats = self.encoder(x.reshape(B * 2, 1, *x.shape[2:]))  # (2B, C, S/st, S/st): both images, shared weights
        feats = F.normalize(feats, dim=1)
        f1, f2 = feats.reshape(B, 2, *feats.shape[1:]).unbind(1)  # (B, C, S/st, S/st) each
        corr = local_correlation(f1, f2, self.max_displacement)  # (B, (2d+1)², S/st, S/st)
        coords = coordinate_channels(B, corr.shape[2], corr.shape[3], device=x.device, dtype=x.dtype)
        return self.head(torch.cat([corr, coords], dim=1)).flatten(1)  # (B, head_width · (S/16)²)


class ChangeNet(nn.Module):
    """Two grayscale images → normalised ``(dx, dy, log s)`` and change-type logits.

    Args:
        image_size: side ``S`` of the square input images (the network's training size).
        max_shift: pixels that the regressed ``dx, dy`` are divided by.
        max_scale: ``log max_scale`` is what the regressed ``log s`` is divided by.
        arch: ``"stacked"`` or ``"siamese"`` (module docstring).
        widths: trunk widths (stacked: one per stage, default ``(32, 32, 64, 128)``; siamese: the three
            encoder widths, default ``(16, 32, 32)``).
        max_displacement: siamese only: correlation range in feature cells (stride 4).
        hidden: width of the fully connected layer before the heads.
        dropout: dropout before the heads.
        coords: stacked only: two coordinate channels (x, y in [-1, 1]) added to the input (CoordConv), so
            the first convolutions can relate motion to the direction from the centre (a scaling).
        corr_stride: siamese only: feature stride of the correlation, 4 or 8.

    ``forward(x: Tensor[B, 2, S, S]) -> Tensor[B, 7]``.
    """

    def __init__(self, *, image_size: int = 128, max_shift: float = 16.0, max_scale: float = 1.3,
                 arch: str = "stacked", widths: Sequence[int] | None = None, max_displacement: int | None = None,
                 hidden: int = 256, dropout: float = 0.0, coords: bool = False, corr_stride: int = 4) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if max_shift <= 0 or max_scale <= 1:
            raise ValueError(f"need max_shift > 0 and max_scale > 1, got {max_shift}, {max_scale}")
        self.image_size = int(image_size)
        self.max_shift = float(max_shift)
        self.max_scale = float(max_scale)
        self.arch = arch
        if arch == "stacked":
            self.trunk: nn.Module = StackedTrunk(image_size=image_size, widths=tuple(widths or (32, 32, 64, 128)),
                                                 coords=coords)
        else:
            if widths is not None and len(widths) != 3:
                raise ValueError(f"the siamese trunk takes 3 encoder widths, got {tuple(widths)}")
            if max_displacement is None:  # cover the largest motion: |t| + (s − 1)·(corner distance), in cells
                motion = math.hypot(max_shift, max_shift) + (max_scale - 1) * image_size / math.sqrt(2)
                max_displacement = max(2, math.ceil(motion / corr_stride * 0.75))
            self.trunk = SiameseTrunk(image_size=image_size, widths=tuple(widths or (16, 32, 32)),
                                      max_displacement=max_displacement, stride=corr_stride)
        self.fc = nn.Sequential(nn.Linear(self.trunk.out_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.reg = nn.Linear(hidden, 3)
        self.cls = nn.Linear(hidden, len(CHANGE_TYPES))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(f"x must be Tensor[B, 2, {self.image_size}, {self.image_size}] (img1, img2), got "
                             f"{tuple(x.shape)}")
        h = self.fc(self.trunk(standardize(x)))  # (B, hidden)
        return torch.cat([self.reg(h), self.cls(h)], dim=1)  # (B, 7)

    def normalize_targets(self, dx: Tensor, dy: Tensor, log_s: Tensor) -> Tensor:
        """``Tensor[B, 3]`` regression targets from pixels and log-scales."""
        return torch.stack([dx / self.max_shift, dy / self.max_shift, log_s / math.log(self.max_scale)], dim=1)

    def decode(self, out: Tensor) -> dict[str, Tensor]:
        """``{"dx", "dy" (px), "log_s", "scale", "logits" Tensor[B, 4], "type" Tensor[B] int64}`` from
        ``forward``'s ``Tensor[B, 7]``."""
        if out.ndim != 2 or out.shape[1] != 7:
            raise ValueError(f"out must be Tensor[B, 7], got {tuple(out.shape)}")
        log_s = out[:, 2] * math.log(self.max_scale)
        return {"dx": out[:, 0] * self.max_shift, "dy": out[:, 1] * self.max_shift, "log_s": log_s,
                "scale": log_s.exp(), "logits": out[:, 3:], "type": out[:, 3:].argmax(1)}

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this network (saved in checkpoints)."""
        t = self.trunk
        cfg: dict[str, Any] = {"image_size": self.image_size, "max_shift": self.max_shift, "max_scale": self.max_scale,
                               "arch": self.arch, "hidden": self.fc[0].out_features, "dropout": self.fc[2].p}
        if isinstance(t, SiameseTrunk):
            convs = [m.out_channels for m in t.encoder.modules() if isinstance(m, nn.Conv2d)]
            cfg["widths"] = [convs[0], convs[1], convs[-1]]
            cfg["max_displacement"] = t.max_displacement
            cfg["corr_stride"] = t.stride
        else:
            cfg["widths"] = [m.out_channels for m in t.body.modules() if isinstance(m, nn.Conv2d)][1::2]
            cfg["coords"] = t.coords
        return cfg


def gate(decoded: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's answer made consistent with its type head: a shift the head does not see is reported
    as ``dx = dy = 0``, a scaling it does not see as ``s = 1``. Returns a new dict (same keys)."""
    t = decoded["type"]
    shifted = (t == 1) | (t == 3)
    scaled = (t == 2) | (t == 3)
    out = dict(decoded)
    out["dx"] = torch.where(shifted, decoded["dx"], torch.zeros_like(decoded["dx"]))
    out["dy"] = torch.where(shifted, decoded["dy"], torch.zeros_like(decoded["dy"]))
    out["log_s"] = torch.where(scaled, decoded["log_s"], torch.zeros_like(decoded["log_s"]))
    out["scale"] = out["log_s"].exp()
    return out


def change_loss(model: ChangeNet, out: Tensor, target: Tensor, *, shift_weight: float = 1.0,
                scale_weight: float = 1.0, type_weight: float = 0.2, beta: float = 0.05) -> dict[str, Tensor]:
    """The training loss: smooth-L1 on the normalised shift and log-scale, cross-entropy on the type.

    Args:
        out: ``Tensor[B, 7]`` from ``forward``.
        target: ``Tensor[B, 4]`` = ``(dx, dy, log_s, type)`` (type as a float, see ``vislab.data.pairs``).
        shift_weight, scale_weight, type_weight: the weights of the three terms.
        beta: smooth-L1 transition point, in normalised units.
    Returns:
        ``{"loss", "loss_shift", "loss_scale", "loss_type"}`` (``loss`` the weighted sum).
    """
    if target.ndim != 2 or target.shape[1] != 4:
        raise ValueError(f"target must be Tensor[B, 4] (dx, dy, log_s, type), got {tuple(target.shape)}")
    norm = model.normalize_targets(target[:, 0], target[:, 1], target[:, 2])  # (B, 3)
    l_shift = F.smooth_l1_loss(out[:, :2], norm[:, :2], beta=beta)
    l_scale = F.smooth_l1_loss(out[:, 2], norm[:, 2], beta=beta)
    l_type = F.cross_entropy(out[:, 3:], target[:, 3].long())
    total = shift_weight * l_shift + scale_weight * l_scale + type_weight * l_type
    return {"loss": total, "loss_shift": l_shift, "loss_scale": l_scale, "loss_type": l_type}


def augment_pairs(x: Tensor, target: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random symmetries that keep the change model, per sample, with the targets transformed to match:
    horizontal flip (``dx → −dx``), vertical flip (``dy → −dy``), transpose (``dx ↔ dy``; square images)
    and swapping the two images (the inverse change: ``log s → −log s``, ``t → −t / s``).

    ``x``: ``Tensor[B, 2, S, S]``, ``target``: ``Tensor[B, 4]``. Returns new tensors.
    """
    B = x.shape[0]
    x, y = x.clone(), target.clone()
    r = torch.rand(B, 4, generator=generator, device=x.device) < 0.5  # (B, 4) one coin per symmetry
    hf, vf, tr, sw = r.unbind(1)
    x[hf] = x[hf].flip(-1)
    y[hf, 0] = -y[hf, 0]
    x[vf] = x[vf].flip(-2)
    y[vf, 1] = -y[vf, 1]
    x[tr] = x[tr].transpose(-1, -2)
    dx_tr = y[tr, 0].clone()
    y[tr, 0] = y[tr, 1]
    y[tr, 1] = dx_tr
    x[sw] = x[sw].flip(1)  # (img1, img2) -> (img2, img1)
    s = y[sw, 2].exp()
    y[sw, 0] = -y[sw, 0] / s
    y[sw, 1] = -y[sw, 1] / s
    y[sw, 2] = -y[sw, 2]
    return x, y
