"""Vision Transformer (Dosovitskiy et al. 2021, https://arxiv.org/abs/2010.11929), written from its parts.

An image ``Tensor[B, 3, S, S]`` is cut into ``(S/p)²`` patches by a ``p×p`` stride-``p`` convolution
(the linear patch projection), a learned class token is put in front, a learned positional embedding
is added, and ``L`` pre-norm encoder blocks follow::

    x = x + MSA(LN(x))        # multi-head self-attention, our own (qkv projection, q·kᵀ/√d, softmax, ·v)
    x = x + MLP(LN(x))        # Linear → GELU → Linear

then a final LayerNorm and a linear head on the class token.

The module tree and parameter names are those of ``torchvision.models.VisionTransformer``
(``conv_proj``, ``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_i.{ln_1,
self_attention.{in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.0, mlp.3}``, ``encoder.ln``,
``heads.head``), so torchvision's state dicts load unchanged, ``vit_b_16`` included, and the outputs
are equal. ``forward(x, need_weights=True)`` also returns every block's attention weights per head.

Two attention paths: the readable one (explicit ``softmax(q·kᵀ·scale)·v``, used whenever the
weights are asked for) and a fast one with ``F.scaled_dot_product_attention`` (the default otherwise;
tests check that both agree). ``interpolate_pos_embedding`` resizes the positional embedding to another
image size exactly as torchvision's ``interpolate_embeddings``; ``load_vit_b_16`` reads a torchvision
``vit_b_16`` state dict file (nothing is downloaded).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vislab.models._registry import register_model

__all__ = ["EncoderBlock", "MultiHeadSelfAttention", "VisionTransformer", "interpolate_pos_embedding",
           "load_vit_b_16", "load_vit_state_dict", "vit", "vit_b_16", "VIT_B_16"]

# torchvision's vit_b_16: patch 16, 12 layers, 12 heads, width 768, MLP 3072, 224 px
VIT_B_16 = {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768,
            "mlp_dim": 3072}


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    ``h`` heads; each projects the ``embed_dim`` input to a query and a key of ``head_dim_qk`` channels
    and a value of ``head_dim_v`` channels (both ``embed_dim / h`` by default, as in torchvision); the
    ``h·head_dim_v`` concatenation is mapped to ``out_dim`` (default ``embed_dim``) by ``out_proj``.

    Parameters: ``in_proj_weight Tensor[h·(2·d_k + d_v), embed_dim]`` (the rows of all queries, then all
    keys, then all values, head-major inside each, as torchvision), ``in_proj_bias``, ``out_proj``
    (``nn.Linear(h·d_v, out_dim)``).

    ``forward(x: Tensor[B, N, embed_dim], *, need_weights=False)`` → ``(Tensor[B, N, out_dim],
    Tensor[B, h, N, N] or None)``: the attention weights per head (before attention dropout) when asked.
    ``fused`` (default True) picks ``F.scaled_dot_product_attention`` when the weights are not needed.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 head_dim_qk: int | None = None, head_dim_v: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        _positive_int("embed_dim", embed_dim)
        _positive_int("num_heads", num_heads)
        if (head_dim_qk is None or head_dim_v is None) and embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) unless "
                             "head_dim_qk and head_dim_v are given")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim_qk = _positive_int("head_dim_qk", embed_dim // num_heads if head_dim_qk is None else head_dim_qk)
        self.head_dim_v = _positive_int("head_dim_v", embed_dim // num_heads if head_dim_v is None else head_dim_v)
        self.out_dim = _positive_int("out_dim", out_dim or embed_dim)
        self.dropout = dropout
        self.scale = self.head_dim_qk ** -0.5
        self.fused = True
        rows = num_heads * (2 * self.head_dim_qk + self.head_dim_v)
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(rows)) if bias else None
        self.out_proj = nn.Linear(num_heads * self.head_dim_v, self.out_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform ``in_proj_weight``, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj.reset_parameters()
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values per head: ``Tensor[B, h, N, d_k]`` ×2 and ``Tensor[B, h, N, d_v]``."""
        B, N, _ = x.shape
        h, dk, dv = self.num_heads, self.head_dim_qk, self.head_dim_v
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, h·(2dk + dv))
        q, k, v = qkv.split([h * dk, h * dk, h * dv], dim=-1)  # (B, N, h·dk), (B, N, h·dk), (B, N, h·dv)
        q = q.view(B, N, h, dk).transpose(1, 2)  # (B, h, N, dk)
        k = k.view(B, N, h, dk).transpose(1, 2)  # (B, h, N, dk)
        v = v.view(B, N, h, dv).transpose(1, 2)  # (B, h, N, dv)
        return q, k, v

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"expected tokens Tensor[B, N, {self.embed_dim}], got {tuple(x.shape)}")
        B, N, _ = x.shape
        q, k, v = self.project(x)
        p = self.dropout if self.training else 0.0
        weights = None
        if self.fused and not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)  # (B, h, N, dv)
        else:
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            weights = logits.softmax(dim=-1)  # (B, h, N, N); each row sums to 1
            out = F.dropout(weights, p=p, training=self.training) @ v  # (B, h, N, dv)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim_v)  # (B, N, h·dv)
        return self.out_proj(out), (weights if need_weights else None)  # (B, N, out_dim)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, d_k={self.head_dim_qk}, "
                f"d_v={self.head_dim_v}, out_dim={self.out_dim}, dropout={self.dropout}")


def _mlp(in_dim: int, mlp_dim: int, dropout: float) -> nn.Sequential:
    """torchvision's ``MLPBlock`` layout: ``0`` Linear, ``1`` GELU, ``2`` Dropout, ``3`` Linear, ``4`` Dropout."""
    mlp = nn.Sequential(nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim),
                        nn.Dropout(dropout))
    for m in (mlp[0], mlp[3]):
        nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(m.bias, std=1e-6)
    return mlp


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + Dropout(MSA(LN₁(x)))``, then ``x + MLP(LN₂(x))``; tokens ``Tensor[B, N, D]``."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, *, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = MultiHeadSelfAttention(hidden_dim, num_heads, dropout=attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = _mlp(hidden_dim, mlp_dim, dropout)

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        a, weights = self.self_attention(self.ln_1(x), need_weights=need_weights)  # (B, N, D), (B, h, N, N)
        x = x + self.dropout(a)
        return x + self.mlp(self.ln_2(x)), weights


class Encoder(nn.Module):
    """Positional embedding, dropout, the blocks (``layers.encoder_layer_i``) and the final LayerNorm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, *,
                 dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))  # as BERT
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout=dropout,
                                                attention_dropout=attention_dropout))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: Tensor, *, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        x = self.dropout(x + self.pos_embedding)  # (B, N+1, D)
        attentions = []
        for block in self.layers:
            x, w = block(x, need_weights=need_weights)
            if w is not None:
                attentions.append(w)
        return self.ln(x), attentions


class VisionTransformer(nn.Module):
    """ViT with torchvision's state dict; ``forward(x)`` → logits ``Tensor[B, num_classes]``.

    Args:
        image_size: side ``S`` of the square input images; a multiple of ``patch_size``.
        patch_size: side ``p`` of the square patches; the token grid is ``(S/p)×(S/p)``, ``N = (S/p)²``.
        num_layers, num_heads, hidden_dim (``D``, divisible by ``num_heads``), mlp_dim: the encoder.
        num_classes: outputs of the linear head on the class token.
        dropout: after the positional embedding, in the MLPs and after attention; attention_dropout: on
            the attention weights.

    ``forward(x: Tensor[B, 3, S, S], need_weights=False)`` returns the logits, or with
    ``need_weights=True`` ``(logits, [Tensor[B, heads, N+1, N+1] for each block])``: the softmax
    attention of every block per head, token 0 being the class token and tokens ``1..N`` the patches in
    row-major order.
    """

    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                 mlp_dim: int, *, num_classes: int = 1000, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        for name, v in (("image_size", image_size), ("patch_size", patch_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("hidden_dim", hidden_dim), ("mlp_dim", mlp_dim),
                        ("num_classes", num_classes)):
            _positive_int(name, v)
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        for name, v in (("dropout", dropout), ("attention_dropout", attention_dropout)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {v}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.seq_length = self.grid_size[0] * self.grid_size[1] + 1

        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(self.seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout=dropout,
                               attention_dropout=attention_dropout)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))
        # torchvision's initialisation: LeCun-normal-like patch projection, zero head
        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    @property
    def blocks(self) -> list[EncoderBlock]:
        return list(self.encoder.layers)

    def set_fused_attention(self, enabled: bool) -> None:
        """Use ``F.scaled_dot_product_attention`` (True) or the readable path (False) when weights are not needed."""
        for block in self.blocks:
            block.self_attention.fused = bool(enabled)

    def tokens(self, x: Tensor) -> Tensor:
        """Patch tokens with the class token in front: ``Tensor[B, 3, S, S]`` → ``Tensor[B, N+1, D]``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected images Tensor[B, 3, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        B = x.shape[0]
        x = self.conv_proj(x)  # (B, D, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D): patches in row-major order
        return torch.cat([self.class_token.expand(B, -1, -1), x], dim=1)  # (B, N+1, D)

    def forward(self, x: Tensor, need_weights: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        z, attentions = self.encoder(self.tokens(x), need_weights=need_weights)  # (B, N+1, D)
        logits = self.heads(z[:, 0])  # (B, num_classes): the class token
        return (logits, attentions) if need_weights else logits

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, patch_size={self.patch_size}, grid={self.grid_size}, "
                f"num_layers={self.num_layers}, num_heads={self.num_heads}, hidden_dim={self.hidden_dim}, "
                f"mlp_dim={self.mlp_dim}")


def interpolate_pos_embedding(pos_embedding: Tensor, grid_size: int | tuple[int, int], *,
                              mode: str = "bicubic") -> Tensor:
    """Resize a positional embedding to another patch grid, as torchvision's ``interpolate_embeddings``.

    Args:
        pos_embedding: ``Tensor[1, 1 + n·n, D]``: the class token's embedding, then a square ``n×n`` grid.
        grid_size: the new grid ``(gh, gw)`` (or one int for a square grid), e.g. ``image_size // patch_size``.
        mode: ``F.interpolate`` mode on the grid (``align_corners=True``, as torchvision).

    Returns:
        ``Tensor[1, 1 + gh·gw, D]``; the class token's embedding is kept as it is. The input itself
        when the grid does not change.
    """
    if pos_embedding.ndim != 3 or pos_embedding.shape[0] != 1:
        raise ValueError(f"pos_embedding must be Tensor[1, 1 + N, D], got {tuple(pos_embedding.shape)}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    _positive_int("grid height", gh)
    _positive_int("grid width", gw)
    _, seq, dim = pos_embedding.shape
    n = math.isqrt(seq - 1)
    if n * n != seq - 1:
        raise ValueError(f"pos_embedding must hold a class token and a square grid, got {seq - 1} patch positions")
    if (gh, gw) == (n, n):
        return pos_embedding
    cls_pos, grid = pos_embedding[:, :1], pos_embedding[:, 1:]  # (1, 1, D), (1, n·n, D)
    grid = grid.transpose(1, 2).reshape(1, dim, n, n)  # (1, D, n, n)
    grid = F.interpolate(grid, size=(gh, gw), mode=mode, align_corners=True)  # (1, D, gh, gw)
    grid = grid.reshape(1, dim, gh * gw).transpose(1, 2)  # (1, gh·gw, D)
    return torch.cat([cls_pos, grid], dim=1)  # (1, 1 + gh·gw, D)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "conv_proj.weight" not in obj:
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or "conv_proj.weight" not in obj:
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} is not a torchvision VisionTransformer state dict (no 'conv_proj.weight'; "
                         f"found {keys})")
    state = {}
    for k, v in obj.items():
        # torchvision's published checkpoints predate its MLP rename: mlp.linear_1/2 → mlp.0/3
        k = k.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3.")
        state[k] = v
    return state


def load_vit_state_dict(model: VisionTransformer, state: Mapping[str, Tensor], *,
                        interpolation_mode: str = "bicubic") -> dict[str, Any]:
    """Load a torchvision ViT state dict into ``model``, adapting what may differ for fine-tuning.

    The positional embedding is interpolated to the model's grid (:func:`interpolate_pos_embedding`)
    when the image size differs; a head of another class count is left as the model's own
    (zero-initialised) head. Every other tensor must match in shape. Returns what was adapted.
    """
    state = dict(state)
    info: dict[str, Any] = {"interpolated_pos_embedding": False, "new_head": False}
    pos = state.get("encoder.pos_embedding")
    if pos is not None and pos.shape[1] != model.seq_length:
        state["encoder.pos_embedding"] = interpolate_pos_embedding(pos, model.grid_size, mode=interpolation_mode)
        info["interpolated_pos_embedding"] = [int(pos.shape[1]), model.seq_length]
    own = model.state_dict()
    on_meta = any(t.is_meta for t in own.values())  # built without memory: the state dict's tensors are assigned
    head_keys = [k for k in state if k.startswith("heads.")]
    if any(k not in own or own[k].shape != state[k].shape for k in head_keys):
        for k in head_keys:
            state.pop(k)
        for k in own:
            if k.startswith("heads."):  # the model's own head (torchvision's zero initialisation on meta)
                state[k] = torch.zeros(own[k].shape, dtype=own[k].dtype) if on_meta else own[k]
        info["new_head"] = True
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]
    if bad:
        raise ValueError("state dict does not fit the model: " + "; ".join(bad[:5]))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, assign=on_meta)
    return info


@register_model("vit")
def vit(*, image_size: int = 32, patch_size: int = 4, num_layers: int = 6, num_heads: int = 4, hidden_dim: int = 96,
        mlp_dim: int = 192, num_classes: int = 10, dropout: float = 0.0,
        attention_dropout: float = 0.0) -> VisionTransformer:
    """A small ViT for 32-px images (CIFAR-10 at its own resolution; the ``vit`` experiment's shapes default to
    16 px, patch 2, width 64); every size is a keyword."""
    return VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                             num_classes=num_classes, dropout=dropout, attention_dropout=attention_dropout)


def vit_b_16(*, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.0,
             attention_dropout: float = 0.0) -> VisionTransformer:
    """torchvision's ViT-B/16 architecture (random weights): patch 16, 12 layers, 12 heads, D = 768."""
    cfg = {**VIT_B_16, "image_size": image_size}
    return VisionTransformer(**cfg, num_classes=num_classes, dropout=dropout, attention_dropout=attention_dropout)


def load_vit_b_16(path: str | Path, *, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.0,
                  attention_dropout: float = 0.0) -> tuple[VisionTransformer, dict[str, Any]]:
    """ViT-B/16 with the weights of a torchvision ``vit_b_16`` state dict file (``torch.save(model.state_dict())``
    or torchvision's published ``vit_b_16-*.pth``); nothing is downloaded.

    The positional embedding is interpolated for ``image_size`` ≠ 224 and the head replaced (zero-initialised)
    when ``num_classes`` differs from the file's. Returns ``(model, info)`` with what was adapted.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a ViT-B/16 state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ViT-B/16 weights file {path} not found; save one where torchvision has the weights with "
            "torch.save(torchvision.models.vit_b_16(weights='IMAGENET1K_V1').state_dict(), PATH)")
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    w = state["conv_proj.weight"]
    n_layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
    expected = (VIT_B_16["hidden_dim"], 3, VIT_B_16["patch_size"], VIT_B_16["patch_size"])
    if tuple(w.shape) != expected or n_layers != VIT_B_16["num_layers"]:
        raise ValueError(f"{path} is not a ViT-B/16 state dict: conv_proj.weight {tuple(w.shape)} (expected "
                         f"{expected}), {n_layers} encoder layers (expected {VIT_B_16['num_layers']})")
    with torch.device("meta"):  # no time spent initialising 86M parameters that the file replaces
        model = vit_b_16(num_classes=num_classes, image_size=image_size, dropout=dropout,
                         attention_dropout=attention_dropout)
    info = load_vit_state_dict(model, state)
    info["source"] = str(path)
    info["file_classes"] = int(state["heads.head.weight"].shape[0]) if "heads.head.weight" in state else None
    return model, info
