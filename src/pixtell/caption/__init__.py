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
from pixtell.caption.vocab import Vocabulary  # noqa: F401
