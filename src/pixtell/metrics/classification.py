"""Classification metrics (torchmetrics), equal to scikit-learn's on the same predictions.

Averages follow scikit-learn's defaults: classes absent from both the labels and the
predictions are left out of macro averages; undefined precision/recall count as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    topk: int = 5,
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro/weighted P/R/F1, per-class P/R/F1/support, log loss.

    Top-k accuracy is left out when ``topk`` is not below the number of classes (it would
    be 1 by construction).
    """
    target = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    c = len(class_names)
    kw: dict[str, Any] = {"num_classes": c, "validate_args": False}
    per = {
        name: fn(p, target, average="none", **kw)
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    support = torch.bincount(target, minlength=c)
    out: dict[str, Any] = {
        "n": int(target.numel()),
        "accuracy": float(multiclass_accuracy(p, target, average="micro", **kw)),
        "loss": float(-torch.log(p[torch.arange(len(target)), target].clamp_min(1e-15)).mean()),
    }
    if 1 < topk < c:
        out[f"top{topk}_accuracy"] = float(
            multiclass_accuracy(p, target, average="micro", top_k=topk, **kw)
        )
    for avg in ("macro", "weighted"):
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        ):
            out[f"{avg}_{name}"] = float(fn(p, target, average=avg, **kw))
    out["per_class"] = {
        cls: {**{m: float(v[i]) for m, v in per.items()}, "support": int(support[i])}
        for i, cls in enumerate(class_names)
    }
    out["confusion_matrix"] = multiclass_confusion_matrix(p, target, **kw).tolist()
    return out
