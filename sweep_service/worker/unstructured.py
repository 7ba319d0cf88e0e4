"""Unstructured pruning: single weights zeroed, nothing removed.

A plugin declaring `structure = "unstructured"` (NNI's LevelPruner, say) returns masks
over single weights. ModelSpeedup removes only whole channels, so such masks are applied
instead: `torch.nn.utils.prune.custom_from_mask` makes each weight `weight_orig * mask`,
so the masked weights stay zero (and get no gradient) through fine-tuning, and
`make_permanent` then writes the zeros into plain weights. The model keeps its shape and
parameter count; what shrinks is its compressed file, and int8 keeps the zeros exact.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from sweep_service.plugins import Masks
from sweep_service.worker.pruning import RATE_TOLERANCE, MaskError, check_fit, masked_share


def check_weight_masks(model: nn.Module, masks: Masks, layers: list[str], rate: float) -> float:
    """Raise MaskError unless the masks fit `layers` and zero about `rate` of their weights;
    return the share they zero."""
    check_fit(model, masks, layers)
    masked, _ = masked_share(model, masks, layers)
    if abs(masked - rate) > RATE_TOLERANCE:
        raise MaskError(f"masks zero {masked:.1%} of the selected layers' weights but the rate is {rate:.0%} "
                        f"(tolerance {RATE_TOLERANCE:.0%}): the plugin does not honour the rate")
    return masked


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the masked weights and keep them zero while the model trains (in place)."""
    modules = dict(model.named_modules())
    for name, by_param in masks.items():
        for param, mask in by_param.items():
            prune.custom_from_mask(modules[name], param, mask.to(getattr(modules[name], param).device))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Replace each parameter `apply_masks` masked by its masked value, as a plain
    parameter (in place). `custom_from_mask` keeps a parameter `<name>` as `<name>_orig`
    and `<name>_mask`; those pairs are what is made permanent."""
    for module in model.modules():
        params = {name for name, _ in module.named_parameters(recurse=False)}
        for buffer, _ in list(module.named_buffers(recurse=False)):
            name = buffer.removesuffix("_mask")
            if buffer.endswith("_mask") and f"{name}_orig" in params and prune.is_pruned(module):
                prune.remove(module, name)
    return model


def zero_share(model: nn.Module) -> float:
    """The share of all the model's parameters that are exactly zero."""
    with torch.no_grad():
        total = sum(p.numel() for p in model.parameters())
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return zeros / total if total else 0.0
