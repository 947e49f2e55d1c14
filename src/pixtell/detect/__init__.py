"""Object detection: ``analyze``, ``convert``, ``train``, ``evaluate``, ``predict`` (DESIGN.md)."""

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
from pixtell.detect.evaluate import EvalResult, evaluate, evaluate_files
from pixtell.detect.predict import Detection, Detector, Predictions, image_listing, predict
from pixtell.detect.train import DetectRecipe, train
from pixtell.engine import TrainingInterrupted
from pixtell.runs import Run

__all__ = [
    "AnalysisResult",
    "DetDataset",
    "DetImage",
    "DetectRecipe",
    "Detection",
    "DetectionDataset",
    "Detector",
    "EvalResult",
    "Predictions",
    "Run",
    "TrainingInterrupted",
    "analyze",
    "build_transforms",
    "collate",
    "convert",
    "evaluate",
    "evaluate_files",
    "image_listing",
    "load_dataset",
    "predict",
    "read_split",
    "split_dataset",
    "to_coco_dict",
    "train",
    "write_split",
]
