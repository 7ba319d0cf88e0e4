"""Registry of torchvision CNNs adapted for the sweep: 10-class heads, small inputs.

    from model_zoo import list_models, create_model, model_info
    model = create_model("resnet50", num_classes=10, weights="imagenet", weights_dir="weights")
"""
from model_zoo import _torchvision  # noqa: F401  (registers the torchvision models)
from model_zoo._registry import (
    ModelInfo,
    UnknownModelError,
    WeightsUnavailableError,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "WeightsUnavailableError",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
