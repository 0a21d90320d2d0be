"""Faster R-CNN from its pieces, one file per component (like ``torchvision.models.detection``).

``anchors`` → ``rpn`` (head, proposal layer) → ``targets`` (anchor labels, samplers, RoI targets) →
``roi_heads`` (RoI pooling, two FC layers, predictor, post-processing) → ``losses``; ``faster_rcnn``
assembles them; ``backbones`` builds stride-16 trunks. Box maths: :mod:`vislab.ops.boxes`.
"""

from vislab.models.detection.anchors import AnchorGenerator, cell_anchors, grid_anchors
from vislab.models.detection.backbones import DetectionBackbone, build_backbone
from vislab.models.detection.faster_rcnn import (
    DetectionTransform,
    FasterRCNN,
    build_torchvision_faster_rcnn,
    copy_weights_to_torchvision,
    resize_boxes,
)
from vislab.models.detection.losses import fast_rcnn_loss, rpn_loss
from vislab.models.detection.roi_heads import BoxPredictor, RoIHeads, TwoFCHead, pool_rois, postprocess_detections
from vislab.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    flatten_rpn_outputs,
    nms_top_n,
    pre_nms_proposals,
    select_proposals,
)
from vislab.models.detection.targets import assign_roi_targets, label_anchors, sample_labels, sample_rois

__all__ = [
    "AnchorGenerator", "BoxPredictor", "DetectionBackbone", "DetectionTransform", "FasterRCNN", "RPNHead",
    "RegionProposalNetwork", "RoIHeads", "TwoFCHead", "assign_roi_targets", "build_backbone",
    "build_torchvision_faster_rcnn", "cell_anchors", "copy_weights_to_torchvision", "fast_rcnn_loss",
    "flatten_rpn_outputs", "grid_anchors", "label_anchors", "nms_top_n", "pool_rois", "postprocess_detections",
    "pre_nms_proposals", "resize_boxes", "rpn_loss", "sample_labels", "sample_rois", "select_proposals",
]
