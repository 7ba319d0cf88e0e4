"""Pruning mechanics shared by every plugin: which layers, checking masks, speedup."""
from __future__ import annotations

import logging
from unittest import mock

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
    from nni.compression.speedup import ModelSpeedup, mask_conflict, model_speedup, replacement

    model.eval()
    dummy = torch.rand(1, 3, image_size, image_size)
    # Three NNI 3.0 helpers took half of a speedup at one thread: mask statistics formatted
    # for every graph node into log messages (ours are not logged); the prune-dimension
    # check, which sums int tensors (a boolean version gives its answer); and the conv
    # replacement, which loops over groups in Python (mobilenet_v2 has 52 depthwise convs).
    # A fourth, its run itself, saved the weights to a temporary file and read them back.
    with quiet_nni(), mock.patch.object(model_speedup, "sparsity_stats", lambda mask: ""), \
            mock.patch.object(mask_conflict, "detect_mask_prune_dim", detect_mask_prune_dim), \
            mock.patch.object(replacement, "replace_conv2d", _replace_grouped_conv2d(replacement.replace_conv2d)):
        graph = torch.fx.symbolic_trace(model)
        speedup_in_memory(ModelSpeedup(model, dummy, masks, graph_module=graph, logger=_QUIET_LOGGER))
    return model.eval()  # replaced batch-norm layers come back in train mode


def speedup_in_memory(job) -> nn.Module:
    """NNI 3.0's `ModelSpeedup.speedup_model` (the same steps, without its log lines), with the
    weights, which the mask propagation overwrites with random values, kept in memory rather
    than saved to a temporary file and read back: resnet18's 45 MB went to disk and back
    in every trial (median speedup 0.269 -> 0.239 s for resnet18, 0.234 -> 0.220 s for
    mobilenet_v2, at one thread on an idle disk)."""
    weights = {name: tensor.detach().clone() for name, tensor in job.graph_module.state_dict().items()}
    training = job.graph_module.training
    try:
        job.graph_module.train(False)
        job.fix_mask_conflict()
        job.initialize_propagate(job.dummy_input)
        job.propagate_originally()
        job.initialize_update_sparsity()
        job.update_direct_sparsity()
        job.update_indirect_sparsity()
        job.fix_mask_conflict()
    finally:
        job.graph_module.load_state_dict(weights)
        job.graph_module.train(training)
    job.replace_compressed_modules()
    return job.bound_model


def detect_mask_prune_dim(graph_module: nn.Module, masks: Masks) -> int:
    """NNI 3.0's `detect_mask_prune_dim` without its logging: 0 if the conv masks remove
    output filters at least as much as input channels, else 1."""
    preserved, total = [0, 0], [0, 0]
    for name, by_param in masks.items():
        mask = by_param.get("weight")
        if mask is None or not isinstance(graph_module.get_submodule(name), nn.Conv2d):
            continue
        if bool(mask.amin() < 0):
            raise ValueError(f"mask of {name} has negative values")
        # Non-negative, so a kernel's sum is > 0 exactly where any of it is: one reduction
        # instead of comparing every value first (resnet18: 28 -> 10 ms, four calls a speedup).
        kept = mask.reshape(mask.shape[0], mask.shape[1], -1).sum(dim=2) > 0
        for dim, alive in enumerate((kept.any(dim=1), kept.any(dim=0))):
            preserved[dim] += int(alive.sum())
            total[dim] += alive.numel()
    if 0 in total:
        return 0
    sparsity = [1 - p / t for p, t in zip(preserved, total)]
    return 0 if sparsity[0] >= sparsity[1] else 1


def _replace_grouped_conv2d(nni_replace_conv2d):
    """NNI 3.0's `replace_conv2d` with its per-group loop done in a few tensor operations.

    Grouped convs whose groups keep equal numbers of input and output channels (what filter
    pruning and speedup's group-dependency fix produce) are rebuilt here; everything else,
    including every case NNI rejects with an error, goes to NNI's own function.
    """
    from nni.compression.speedup.replacement import convert_to_coarse_mask

    def replace(conv: nn.Conv2d, masks) -> nn.Conv2d:
        in_masks, output_mask, _ = masks
        if conv.groups == 1 or len(in_masks) != 1:
            return nni_replace_conv2d(conv, masks)
        _, kept_in = convert_to_coarse_mask(in_masks[0], 1)
        _, kept_out = convert_to_coarse_mask(output_mask, 1)
        in_step, out_step = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        in_per_group = torch.bincount(kept_in // in_step, minlength=conv.groups)
        out_per_group = torch.bincount(kept_out // out_step, minlength=conv.groups)
        alive = in_per_group > 0
        new_in, new_out = int(in_per_group.max()), int(out_per_group.max())
        if (new_in == 0 or new_out == 0 or not torch.equal(alive, out_per_group > 0)
                or bool((in_per_group[alive] != new_in).any()) or bool((out_per_group[alive] != new_out).any())):
            return nni_replace_conv2d(conv, masks)
        groups = int(alive.sum())
        # Output filter r of kept group j keeps that group's kept input channels (indices
        # within the group), as NNI's loop copies them.
        local_in = (kept_in % in_step).reshape(groups, new_in).repeat_interleave(new_out, dim=0)
        weight = conv.weight.detach()[kept_out]
        index = local_in[:, :, None, None].expand(-1, -1, *weight.shape[2:])
        new_conv = nn.Conv2d(len(kept_in), len(kept_out), conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation, groups=groups,
                             bias=conv.bias is not None, padding_mode=conv.padding_mode).to(conv.weight.device)
        with torch.no_grad():
            new_conv.weight.copy_(torch.gather(weight, 1, index))
            if conv.bias is not None:
                new_conv.bias.copy_(conv.bias.detach()[kept_out])
        return new_conv

    return replace
