"""`vislab gradcam --checkpoint CKPT [--method NAME] IMAGE...`: explanation overlays from a checkpoint of a vislab
classification run (folder-classifier, transfer, vit: its ViT, its CNN and its pretrained ViT-B/16)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vislab.errors import UserError
from vislab.explain._names import ATTENTION_NAMES, METHOD_NAMES, SUMMARIES, canonical_method


def methods_text() -> str:
    return "\n".join(f"  {name:<14}{SUMMARIES[name]}" for name in METHOD_NAMES)


def _method(value: str) -> str:
    if value == "list":
        return value
    try:
        return canonical_method(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab gradcam` (the CLI builds its parser from this)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "methods (--method NAME; spellings such as score-cam or Grad-CAM++ work):\n" + methods_text()
    p.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by a vislab classification run")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--method", default="gradcam", type=_method, metavar="NAME",
                   help=f"explanation method: {', '.join(METHOD_NAMES)} (default gradcam; `--method list` "
                        "describes them)")
    p.add_argument("--out", default="gradcam", metavar="DIR",
                   help="folder for the overlays STEM_METHOD.png (inputs sharing a file name keep their folders "
                        "below it) and METHOD_grid.png (default: gradcam)")
    p.add_argument("--layer", default=None,
                   help="module name of the layer (default: the last conv; for a ViT the last block's ln_1)")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: the prediction)")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                   help="images per forward pass (Score-CAM/Ablation-CAM masked forwards; default 32)")


def load_classifier(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model saved by a classification run (weights_only load) and return it with its metadata.

    Model specs in the checkpoint's ``vislab["model"]``: ``{"kind": "registry"|"backbone", "name", "kwargs"}``
    (folder-classifier, transfer) and the vit experiment's ``{"name": "VisionTransformer"|"small_cnn"|"vit_b_16",
    "kwargs"}`` (ViT-B/16 wrapped to take the run's image size, as it was trained).
    """
    from vislab.engine.checkpoint import model_state, read_checkpoint

    ckpt, meta = read_checkpoint(checkpoint, "classification", what="a classification run (folder-classifier, vit)")
    spec = meta.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs"), dict):
        raise UserError(f"checkpoint {checkpoint} does not describe its model (vislab.model: {spec!r})")
    kind, name, kwargs = spec.get("kind"), spec["name"], spec["kwargs"]
    try:
        if kind == "backbone":
            from vislab.models.backbones import create_classifier

            model = create_classifier(name, pretrained=False, **kwargs)  # the weights come from the checkpoint
        elif name == "VisionTransformer":
            from vislab.models.vit import VisionTransformer

            model = VisionTransformer(**kwargs)
        elif name == "vit_b_16" and kind is None:
            from vislab.experiments.vit import ResizedInput
            from vislab.models.vit import vit_b_16

            model = ResizedInput(vit_b_16(**kwargs), int(kwargs["image_size"]))
        elif kind in ("registry", None):
            from vislab.models import create_model

            model = create_model(name, **kwargs)
        else:
            raise UserError(f"checkpoint {checkpoint}: unknown model kind {kind!r}")
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"checkpoint {checkpoint}: cannot rebuild model {name!r}: {exc}") from None
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {checkpoint}: its weights do not fit model {name!r}: {first}") from None
    return model.eval(), meta


def _vit_of(model: Any) -> tuple[str, Any]:
    from vislab.models.vit import VisionTransformer

    for n, m in model.named_modules():
        if isinstance(m, VisionTransformer):
            return n, m
    return "", None


def build_explainer(model: Any, method: str, layer: str | None, *, batch_size: int = 32) -> Any:
    """``METHOD(model, layer)`` for a rebuilt checkpoint model: the default layer (and, for a ViT token layer,
    the token-grid reshape) chosen as :func:`vislab.explain.cams.default_cam_layer`; UserError for a layer or
    method that does not fit the model."""
    from vislab.explain._cam_base import token_grid
    from vislab.explain.cams import build_cam

    prefix, vit = _vit_of(model)
    if method in ATTENTION_NAMES and vit is None:
        raise UserError(f"--method {method} explains a ViT's attention; this checkpoint holds a "
                        f"{type(model).__name__}")
    kwargs: dict[str, Any] = {"batch_size": batch_size} if method in ("scorecam", "ablationcam") else {}
    reshape = None
    if layer is not None and vit is not None and method not in ATTENTION_NAMES:
        encoder = f"{prefix + '.' if prefix else ''}encoder."
        reshape = token_grid(vit.grid_size) if layer.startswith(encoder) else None
    try:
        return build_cam(method, model, layer, reshape_transform=reshape, **kwargs)
    except ValueError as exc:
        raise UserError(f"--layer: {exc}") from None


def _output_names(paths: list[Path], slug: str, nested: Any) -> list[Path]:
    """``STEM_METHOD.png`` per input; when two inputs share a stem (``a/x.jpg``, ``b/x.jpg``) every output keeps
    its folder relative to the inputs' common folder instead (``vislab detect``'s names), so none overwrites
    another."""
    flat = [Path(f"{p.stem}_{slug}.png") for p in paths]
    return flat if len(set(flat)) == len(flat) else nested(paths, suffix=f"_{slug}.png")


def gradcam_command(args: Any) -> int:
    if args.method == "list":
        print("methods of vislab gradcam --method NAME:\n" + methods_text())
        return 0
    if not args.checkpoint:
        raise UserError("--checkpoint CKPT is required (a checkpoint written by a vislab classification run)")
    if not args.images:
        raise UserError("no IMAGE given (image files, folders or glob patterns)")
    import torch

    from vislab.commands._console import LineWriter
    from vislab.commands.detect import expand_inputs, output_names
    from vislab.data.image_folder import load_rgb
    from vislab.data.transforms import denormalize, eval_transform
    from vislab.explain.gradcam import overlay
    from vislab.report.figures import image_grid

    paths = expand_inputs(list(args.images))
    model, meta = load_classifier(args.checkpoint)
    classes = meta["class_names"]
    if args.target is not None and not 0 <= args.target < len(classes):
        raise UserError(f"--target must be a class index in [0, {len(classes)}), got {args.target}")
    size = int(meta["image_size"])
    tf = eval_transform(meta["mean"], meta["std"])
    images = []
    for path in paths:
        if path.is_dir():
            raise UserError(f"image {path} is a folder")
        try:
            images.append(tf(load_rgb(path, size)))
        except UserError:
            raise
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
    layer = args.layer
    if layer is None and args.method not in ATTENTION_NAMES and _vit_of(model)[1] is None:
        layer = meta.get("cam_layer")
    explainer = build_explainer(model, args.method, layer, batch_size=args.batch_size)
    x = torch.stack(images)  # (B, 3, S, S)
    cams, logits = [], []
    for i in range(0, len(x), args.batch_size):  # bounded memory for many images
        chunk = x[i:i + args.batch_size]
        targets = None if args.target is None else [args.target] * len(chunk)
        try:
            c, lo = explainer(chunk, targets)
        except ValueError as exc:  # a layer the method cannot use (not 4-D, unused in the forward pass)
            raise UserError(f"--method {args.method}: {exc}") from None
        cams.append(c)
        logits.append(lo)
    cams_t, probs = torch.cat(cams), torch.cat(logits).softmax(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = args.method.replace("+", "p")
    names = _output_names(paths, slug, output_names)
    overlays, titles, lines = [], [], []
    for i, (path, rel) in enumerate(zip(paths, names)):
        k = int(probs[i].argmax()) if args.target is None else args.target
        img = denormalize(x[i], meta["mean"], meta["std"]).permute(1, 2, 0).numpy()
        ov = overlay(img, cams_t[i])
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        image_grid([img, ov], target, titles=[path.name, f"{args.method}: {classes[k]} ({probs[i, k]:.1%})"],
                   ncols=2, cell=3.0)
        overlays.append(ov)
        titles.append(f"{path.name}: {classes[k]}")
        lines.append(f"{path}\tpredicted {classes[int(probs[i].argmax())]} ({float(probs[i].max()):.1%})"
                     f"\texplained class {classes[k]}\t-> {target}")
    if len(overlays) > 1:
        image_grid(overlays, out / f"{slug}_grid.png", titles=titles, ncols=4, cell=2.4)
    # every file is complete: now the lines (a reader that goes away early gets exit 141, files intact)
    write = LineWriter()
    for line in lines:
        write(line)
    write(f"method {args.method}, layer {explainer.layer_name}; overlays in {out}")
    return write.exit_code()
