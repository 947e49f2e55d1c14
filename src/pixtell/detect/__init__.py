"""Object detection: ``analyze``, ``convert``, ``train``, ``evaluate``, ``predict`` (see DESIGN.md)."""

from pixtell.detect.analyze import AnalysisResult, analyze
from pixtell.detect.data import (
    DetDataset,
    DetectionDataset,
    DetImage,
    build_transforms,
    collate,
    convert,
    load_dataset,
    read_split,
    split_dataset,
    to_coco_dict,
    write_split,
)

__all__ = [
    "AnalysisResult",
    "DetDataset",
    "DetImage",
    "DetectionDataset",
    "analyze",
    "build_transforms",
    "collate",
    "convert",
    "load_dataset",
    "read_split",
    "split_dataset",
    "to_coco_dict",
    "write_split",
]
