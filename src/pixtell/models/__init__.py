"""Model registry: one name → builder table for every task (``create``, ``list_models``)."""

from pixtell.models import (  # noqa: F401  (registers builders)
    captioning,  # noqa: F401
    clip,
    detection,  # noqa: F401
    tinyvgg,
    torchvision_models,
)
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
