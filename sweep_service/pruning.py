"""Pruning mechanics shared by every plugin: which layers, checking masks, speedup."""
from __future__ import annotations

import torch
from torch import nn

from model_zoo import model_info
from sweep_service.plugins import Masks
from sweep_service.quiet import quiet_nni

# A plugin may miss the requested rate by this much (fraction of the selected layers'
# weights): filter pruning rounds to whole channels, so small layers cannot hit it exactly.
RATE_TOLERANCE = 0.1


class MaskError(ValueError):
    """A plugin's masks do not fit the model or do not honour the rate."""


def select_layers(model: nn.Module, model_name: str, selection: dict) -> list[str]:
    """Module names a pruner may touch, from the config's `layers` section."""
    info = model_info(model_name)
    types = tuple(getattr(nn, t) for t in selection["types"])
    excluded = set(selection.get("exclude", []))
    if not selection.get("include_first_conv", False):
        excluded.add(info.first_conv)
    if not selection.get("include_classifier", False):
        excluded.add(info.classifier)
    return [
        name for name, module in model.named_modules()
        if isinstance(module, types) and name not in excluded
        # NNI's filter pruners cannot prune depthwise/grouped convs on their own: their
        # channels follow the conv that feeds them, which speedup propagates.
        and not (isinstance(module, nn.Conv2d) and module.groups > 1)
    ]


def check_masks(model: nn.Module, masks: Masks, layers: list[str], rate: float) -> float:
    """Raise MaskError unless the masks fit `layers` and remove about `rate` of their
    weights; return the weight sparsity the masks achieve over the selected layers."""
    if not isinstance(masks, dict):
        raise MaskError(f"masks must be a dict of module name -> {{'weight': tensor}}, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    outside = sorted(set(masks) - set(layers))
    if outside:
        raise MaskError(f"masks for modules outside the selected layers: {outside[:5]}")
    for name, by_param in masks.items():
        for param, mask in by_param.items():
            target = getattr(modules[name], param, None)
            if not isinstance(target, torch.Tensor):
                raise MaskError(f"mask for {name}.{param}, which is not a parameter of that module")
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(target.shape):
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise MaskError(f"mask for {name}.{param} has shape {shape}, the parameter has {tuple(target.shape)}")
            if not torch.all((mask == 0) | (mask == 1)):
                raise MaskError(f"mask for {name}.{param} holds values other than 0 and 1")
    total = sum(modules[n].weight.numel() for n in layers)
    removed = sum(int((by_param["weight"] == 0).sum()) for by_param in masks.values() if "weight" in by_param)
    achieved = removed / total if total else 0.0
    if abs(achieved - rate) > RATE_TOLERANCE:
        raise MaskError(
            f"masks remove {achieved:.1%} of the selected layers' weights but the rate is {rate:.0%} "
            f"(tolerance {RATE_TOLERANCE:.0%}): the plugin does not honour the rate"
        )
    return achieved


def speedup(model: nn.Module, masks: Masks, image_size: int) -> nn.Module:
    """Physically remove masked channels with NNI's ModelSpeedup (in place; returns model).

    NNI 3.0's own tracer fails on current torch; a torch.fx graph works (see README,
    "Platform notes"). Batch norm needs eval mode with a batch-1 dummy input.
    """
    from nni.compression.speedup import ModelSpeedup

    model.eval()
    dummy = torch.rand(1, 3, image_size, image_size)
    with quiet_nni():
        graph = torch.fx.symbolic_trace(model)
        ModelSpeedup(model, dummy, masks, graph_module=graph).speedup_model()
    return model
