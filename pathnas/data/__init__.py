"""Data: the synthetic histology generator, image-folder data sets, splits, transforms, loaders."""
from .datasets import (
    IMAGE_EXTENSIONS,
    NORMALIZE_MEAN,
    NORMALIZE_STD,
    SPLITS_FILE,
    DataBundle,
    DataError,
    ImageClassificationFolder,
    SegmentationFolder,
    build_loaders,
    build_transforms,
    data_fingerprint,
    dataset_summary,
    detect_task,
    list_classes,
    load_or_create_splits,
    segmentation_classes,
    set_epoch,
)
from .seeding import EpochShuffle, derive_seed
from .synth import CLASSES, GENERATOR_VERSION, SEGMENT_CLASSES, generate

__all__ = [
    "IMAGE_EXTENSIONS", "NORMALIZE_MEAN", "NORMALIZE_STD", "SPLITS_FILE", "DataBundle", "DataError", "ImageClassificationFolder",
    "SegmentationFolder", "build_loaders", "build_transforms", "data_fingerprint", "dataset_summary", "detect_task",
    "list_classes",
    "load_or_create_splits", "segmentation_classes", "set_epoch", "EpochShuffle", "derive_seed",
    "CLASSES", "GENERATOR_VERSION", "SEGMENT_CLASSES", "generate",
]
