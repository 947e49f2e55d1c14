"""Image captioning: ``train``, ``evaluate``, ``predict`` (see DESIGN.md)."""

from pixtell.caption.data import (  # noqa: F401
    CaptionDataModule,
    CaptionDataset,
    CaptionEvalDataset,
    CaptionImage,
    CaptionTrainDataset,
    OneCaptionPerImageSampler,
    build_vocabulary,
    collate_captions,
    detect_format,
    load_captions,
    read_split,
    split_captions,
    write_split,
)
from pixtell.caption.evaluate import EvalResult, evaluate  # noqa: F401
from pixtell.caption.predict import Captioner, CaptionPrediction, predict  # noqa: F401
from pixtell.caption.train import CaptionRecipe, train  # noqa: F401
from pixtell.caption.vocab import Vocabulary  # noqa: F401
from pixtell.engine import TrainingInterrupted  # noqa: F401
from pixtell.runs import Run  # noqa: F401
