"""The explanation methods' names, torch-free (``vislab --help`` and the CLI parser import this).

:data:`vislab.explain.cams.CAM_METHODS` maps the same CAM names to their classes (a test checks that the two
agree); ``rollout`` and ``gradattention`` are the ViT attention methods of :mod:`vislab.explain.attention`.
"""

from __future__ import annotations

CAM_NAMES = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam", "ablationcam",
             "random")
ATTENTION_NAMES = ("rollout", "gradattention")
METHOD_NAMES = (*CAM_NAMES, *ATTENTION_NAMES)
SUMMARIES = {  # one line per method, for the help
    "gradcam": "Grad-CAM: channel weights = the gradient's spatial mean",
    "gradcam++": "Grad-CAM++: positive gradients with per-pixel weights",
    "hirescam": "HiResCAM: gradient x activation, no averaging",
    "xgradcam": "XGrad-CAM: gradients weighted by the normalised activations",
    "layercam": "LayerCAM: positive gradient x activation per pixel",
    "eigencam": "Eigen-CAM: first principal component of the activations (class-agnostic)",
    "scorecam": "Score-CAM: target logit of the image masked by each channel (K forwards)",
    "ablationcam": "Ablation-CAM: drop of the target logit when each channel is zeroed (K forwards)",
    "random": "random map: the baseline that ignores the model",
    "rollout": "ViT only: attention rollout over all blocks",
    "gradattention": "ViT only: gradient-weighted attention relevance (Chefer et al. 2021)",
}
ALIASES = {"gradcamplusplus": "gradcam++", "gradcampp": "gradcam++", "randomcam": "random",
           "attentionrollout": "rollout", "gradientattention": "gradattention", "chefer": "gradattention"}


def canonical_method(name: str) -> str:
    """The registered name of ``name``; case, ``-``, ``_`` and spaces are ignored (``Score-CAM`` → ``scorecam``,
    ``grad_cam++`` → ``gradcam++``). :class:`ValueError` for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = ALIASES.get(key, key)
    if key not in METHOD_NAMES:
        raise ValueError(f"unknown explanation method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return key
