"""Data: the synthetic histology generator, image-folder data sets, splits, transforms, loaders."""
from .datasets import (
    IMAGE_EXTENSIONS,
    NORMALIZE_MEAN,
    NORMALIZE_STD,
    DataBundle,
    DataError,
    ImageClassificationFolder,
    SegmentationFolder,
    build_loaders,
    build_transforms,
    dataset_summary,
    detect_task,
    list_classes,
    load_or_create_splits,
    segmentation_classes,
)
from .synth import CLASSES, GENERATOR_VERSION, SEGMENT_CLASSES, generate

__all__ = [
    "IMAGE_EXTENSIONS", "NORMALIZE_MEAN", "NORMALIZE_STD", "DataBundle", "DataError", "ImageClassificationFolder",
    "SegmentationFolder", "build_loaders", "build_transforms", "dataset_summary", "detect_task", "list_classes",
    "load_or_create_splits", "segmentation_classes", "CLASSES", "GENERATOR_VERSION", "SEGMENT_CLASSES", "generate",
]
