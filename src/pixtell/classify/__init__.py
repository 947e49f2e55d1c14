"""Image classification: ``train``, ``evaluate``, ``predict``, ``sort`` (and ``undo_sort``),
``zero_shot`` with CLIP, and ``inspect`` (dataset health; ``fix`` / ``undo_fix``)."""

from pixtell.classify.evaluate import EvalResult, evaluate
from pixtell.classify.inspect import InspectResult, LabelIssue, fix, inspect, undo_fix
from pixtell.classify.predict import image_listing, image_paths, predict, sort
from pixtell.classify.predictor import Classifier, Prediction
from pixtell.classify.sort import SortResult, UndoResult, undo_sort
from pixtell.classify.train import ClassifyRecipe, train
from pixtell.classify.zeroshot import zero_shot
from pixtell.engine import TrainingInterrupted
from pixtell.runs import Run

__all__ = [
    "Classifier",
    "ClassifyRecipe",
    "EvalResult",
    "InspectResult",
    "LabelIssue",
    "Prediction",
    "Run",
    "SortResult",
    "TrainingInterrupted",
    "UndoResult",
    "evaluate",
    "fix",
    "image_listing",
    "image_paths",
    "inspect",
    "predict",
    "sort",
    "train",
    "undo_fix",
    "undo_sort",
    "zero_shot",
]
