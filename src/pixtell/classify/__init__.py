"""Image classification: ``train``, ``evaluate``, ``predict``, ``sort`` (and ``undo_sort``)."""

from pixtell.classify.evaluate import EvalResult, evaluate
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
    "Prediction",
    "Run",
    "SortResult",
    "TrainingInterrupted",
    "UndoResult",
    "evaluate",
    "image_listing",
    "image_paths",
    "predict",
    "sort",
    "train",
    "undo_sort",
    "zero_shot",
]
