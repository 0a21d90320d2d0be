"""Datasets (image folders, generated shapes, digit canvases, COCO, CIFAR, LFW) and augmentation."""

from vislab.data.augment import RandomAffineBatch
from vislab.data.cifar import CIFAR10_CLASSES, CifarBinary
from vislab.data.coco_multilabel import COCO_CATEGORIES, CocoMultiLabel
from vislab.data.digit_canvases import DigitCanvasDataset, make_digit_canvases
from vislab.data.image_folder import ImageListDataset, scan_image_folder, stratified_split
from vislab.data.lfw import TensorImageDataset, lfw_faces_vs_nonfaces
from vislab.data.shapes import SHAPE_CLASSES, write_shapes_folder
from vislab.data.triplets import BalancedBatchSampler, TripletDataset

__all__ = ["BalancedBatchSampler", "CIFAR10_CLASSES", "COCO_CATEGORIES", "CifarBinary", "CocoMultiLabel",
           "DigitCanvasDataset", "ImageListDataset", "RandomAffineBatch", "SHAPE_CLASSES", "TensorImageDataset",
           "TripletDataset", "lfw_faces_vs_nonfaces", "make_digit_canvases", "scan_image_folder", "stratified_split",
           "write_shapes_folder"]
