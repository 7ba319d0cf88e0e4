"""The torchvision models of the reference study, plus small ones for fast runs.

torchvision is imported when a model is built or its weights are needed, not when the
models are registered: listing and checking model names (the coordinator's config check)
then costs no torchvision import, which takes seconds.
"""
from __future__ import annotations

from model_zoo._registry import ModelInfo, register_model


def _models():
    import torchvision.models

    return torchvision.models


def _simple(name: str, *, first_conv: str, classifier: str, min_input_size: int = 32) -> None:
    register_model(
        ModelInfo(
            name=name,
            first_conv=first_conv,
            classifier=classifier,
            min_input_size=min_input_size,
            build=lambda: _models().get_model(name, weights=None),
            imagenet_weights=lambda: _models().get_model_weights(name).DEFAULT,
        )
    )


_simple("resnet18", first_conv="conv1", classifier="fc")
_simple("resnet50", first_conv="conv1", classifier="fc")
_simple("vgg16", first_conv="features.0", classifier="classifier.6")
_simple("mobilenet_v2", first_conv="features.0.0", classifier="classifier.1")
_simple("densenet121", first_conv="features.conv0", classifier="classifier")
_simple("efficientnet_b0", first_conv="features.0.0", classifier="classifier.1")
# AlexNet's stride-4 stem and three max-pools need at least 63 px.
_simple("alexnet", first_conv="features.0", classifier="classifier.6", min_input_size=63)

# GoogLeNet: without the auxiliary heads (forward then returns a tensor, which NNI's
# speedup and plain training need) and without transform_input (inputs are normalised
# by the data pipeline). The pretrained checkpoint's aux-head keys are dropped.
register_model(
    ModelInfo(
        name="googlenet",
        first_conv="conv1.conv",
        classifier="fc",
        build=lambda: _models().googlenet(
            weights=None, aux_logits=False, init_weights=True, transform_input=False
        ),
        imagenet_weights=lambda: _models().GoogLeNet_Weights.DEFAULT,
        ignore_keys=("aux1.", "aux2."),
    )
)
