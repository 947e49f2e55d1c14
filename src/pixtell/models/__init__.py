"""Model registry: one name → builder table for every task (``create``, ``list_models``)."""

from pixtell.models import tinyvgg, torchvision_models  # noqa: F401  (registers builders)
from pixtell.models import captioning  # noqa: F401
from pixtell.models import detection  # noqa: F401
from pixtell.models.io import load_model, save_model
from pixtell.models.registry import (
    ModelSpec,
    WeightsUnavailableError,
    count_params,
    create,
    get_spec,
    list_models,
    register,
)

__all__ = [
    "ModelSpec",
    "WeightsUnavailableError",
    "count_params",
    "create",
    "get_spec",
    "list_models",
    "load_model",
    "register",
    "save_model",
]
