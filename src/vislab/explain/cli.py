"""`vislab gradcam --checkpoint CKPT IMAGE...`: Grad-CAM overlays from a checkpoint of a vislab run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab gradcam` (the CLI builds its parser from this)."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by a vislab run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="gradcam", metavar="DIR", help="folder for the overlays (default: gradcam)")
    p.add_argument("--layer", default=None, help="module name of the conv layer (default: the last conv)")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: the prediction)")


def load_classifier(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model saved by a classification run (weights_only load) and return it with its metadata."""
    from vislab.engine.checkpoint import model_state, read_checkpoint

    ckpt, meta = read_checkpoint(checkpoint, "classification", what="a classification run (folder-classifier, vit)")
    spec = meta["model"]
    if spec["kind"] == "registry":
        from vislab.models import create_model

        model = create_model(spec["name"], **spec["kwargs"])
    else:
        from vislab.models.backbones import create_classifier

        model = create_classifier(spec["name"], pretrained=False, **spec["kwargs"])  # weights come from the ckpt
    model.load_state_dict(model_state(ckpt))
    return model.eval(), meta


def gradcam_command(args: Any) -> int:
    import torch

    from vislab.data.image_folder import load_rgb
    from vislab.data.transforms import denormalize, eval_transform
    from vislab.explain.gradcam import GradCAM, overlay
    from vislab.report.figures import image_grid

    model, meta = load_classifier(args.checkpoint)
    size = int(meta["image_size"])
    tf = eval_transform(meta["mean"], meta["std"])
    images, names = [], []
    for p in args.images:
        path = Path(p)
        if not path.exists():
            raise UserError(f"image {path} does not exist")
        try:
            images.append(tf(load_rgb(path, size)))
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        names.append(path)
    classes = meta["class_names"]
    if args.target is not None and not 0 <= args.target < len(classes):
        raise UserError(f"--target must be a class index in [0, {len(classes)}), got {args.target}")
    cam = GradCAM(model, args.layer or meta.get("cam_layer"))
    x = torch.stack(images)
    targets = None if args.target is None else [args.target] * len(images)
    cams, logits = cam(x, targets)
    probs = logits.softmax(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlays, titles = [], []
    for i, name in enumerate(names):
        k = int(probs[i].argmax()) if args.target is None else args.target
        img = denormalize(x[i], meta["mean"], meta["std"]).permute(1, 2, 0).numpy()
        ov = overlay(img, cams[i])
        target = out / f"{name.stem}_gradcam.png"
        image_grid([img, ov], target, titles=[name.name, f"{classes[k]} ({probs[i, k]:.1%})"], ncols=2, cell=3.0)
        overlays.append(ov)
        titles.append(f"{name.name}: {classes[k]}")
        print(f"{name}\tpredicted {classes[int(probs[i].argmax())]} ({float(probs[i].max()):.1%})"
              f"\texplained class {classes[k]}\t-> {target}")
    if len(overlays) > 1:
        image_grid(overlays, out / "gradcam_grid.png", titles=titles, ncols=4, cell=2.4)
    print(f"layer {cam.layer_name}; overlays in {out}")
    return 0
