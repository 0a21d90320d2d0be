"""Metrics: classification (single- and multi-label, checked against scikit-learn), detection (pycocotools),
segmentation (IoU, Dice; boundary: NSD, boundary IoU, HD95, checked against MONAI) and registration (translation
and scale errors, change types)."""

from vislab.metrics.boundary import boundary_iou, hd95, nsd
from vislab.metrics.classification import classification_report, confusion_matrix
from vislab.metrics.detection import coco_map
from vislab.metrics.multilabel import MultiLabelMeter, multilabel_metrics
from vislab.metrics.registration import registration_metrics, scale_errors, translation_errors
from vislab.metrics.segmentation import dice, iou

__all__ = ["boundary_iou", "classification_report", "coco_map", "confusion_matrix", "dice", "hd95", "iou",
           "multilabel_metrics", "MultiLabelMeter", "nsd", "registration_metrics", "scale_errors", "translation_errors"]
