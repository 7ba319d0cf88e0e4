"""Pruning mechanics shared by every plugin: which layers, checking masks, speedup."""
from __future__ import annotations

import logging

import torch
from torch import nn

from model_zoo import model_info
from sweep_service.plugins import Masks
from sweep_service.quiet import quiet_nni

# A plugin may miss the requested rate by this much (fraction of the selected layers'
# weights): filter pruning rounds to whole channels, so small layers cannot hit it exactly.
RATE_TOLERANCE = 0.1


# ModelSpeedup sets its own logger to INFO and logs a line per graph node; give it this one.
_QUIET_LOGGER = logging.getLogger("sweep_service.speedup")
_QUIET_LOGGER.setLevel(logging.ERROR)


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


def check_fit(model: nn.Module, masks: Masks, layers: list[str]) -> None:
    """Raise MaskError unless every mask is a 0/1 tensor shaped like a parameter of a
    selected layer."""
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


def masked_share(model: nn.Module, masks: Masks, layers: list[str]) -> tuple[float, float]:
    """(share of the selected layers' weights the masks zero, share lying in wholly masked
    output filters). Only the latter is what ModelSpeedup removes."""
    modules = dict(model.named_modules())
    total = sum(modules[n].weight.numel() for n in layers)
    masked = whole = 0
    for by_param in masks.values():
        weight = by_param.get("weight")
        if weight is None:
            continue
        zeros = weight.reshape(weight.shape[0], -1) == 0
        masked += int(zeros.sum())
        whole += int(zeros[zeros.all(dim=1)].numel())
    return (masked / total, whole / total) if total else (0.0, 0.0)


def check_masks(model: nn.Module, masks: Masks, layers: list[str], rate: float) -> float:
    """Raise MaskError unless the masks fit `layers`, mask whole output filters and remove
    about `rate` of the selected weights; return the share that speedup will remove."""
    check_fit(model, masks, layers)
    masked, removable = masked_share(model, masks, layers)
    if masked > 0 and removable == 0:
        raise MaskError(
            "no whole output filter is masked: ModelSpeedup removes only whole filters, so these "
            "masks would leave the model unpruned; return filter-structured masks "
            "(see sweep_service.plugins.filter_masks_from_scores)"
        )
    if abs(removable - rate) > RATE_TOLERANCE:
        raise MaskError(
            f"masks remove {removable:.1%} of the selected layers' weights but the rate is {rate:.0%} "
            f"(tolerance {RATE_TOLERANCE:.0%}): the plugin does not honour the rate"
        )
    return removable


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
        ModelSpeedup(model, dummy, masks, graph_module=graph, logger=_QUIET_LOGGER).speedup_model()
    return model.eval()  # replaced batch-norm layers come back in train mode
