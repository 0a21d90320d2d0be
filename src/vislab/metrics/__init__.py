"""Metrics: single-label classification and multi-label (checked against scikit-learn)."""

from vislab.metrics.classification import classification_report, confusion_matrix
from vislab.metrics.multilabel import MultiLabelMeter, multilabel_metrics

__all__ = ["MultiLabelMeter", "classification_report", "confusion_matrix", "multilabel_metrics"]
