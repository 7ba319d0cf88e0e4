"""Pruning mechanics shared by every plugin: which layers, checking what a plugin returns,
turning it into what speedup removes (by group or per layer), speedup, and the check that
the sped-up model computes what the masked model computes."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from model_zoo import model_info
from sweep_service.plugins import Batches, Masks, PrunerPlugin, ScoringPlugin, filter_masks_from_scores
from sweep_service.quiet import quiet_nni
from sweep_service.worker.groups import (
    ZEROABLE,
    Group,
    Removal,
    group_masks,
    masked_reference,
    removal_by_union,
    removal_by_votes,
    removal_from_scores,
    removed_rows,
)

# A plugin may miss the requested rate by this much (fraction of the selected layers'
# weights): filter pruning rounds to whole channels, so small layers cannot hit it exactly.
RATE_TOLERANCE = 0.1


# ModelSpeedup sets its own logger to INFO and logs a line per graph node; give it this one.
_QUIET_LOGGER = logging.getLogger("sweep_service.speedup")
_QUIET_LOGGER.setLevel(logging.ERROR)


# The sped-up model may differ from the masked model by this much, relative to the largest
# logit (at least 1): float32 rounding of reordered sums. Measured on every zoo model the
# difference stays under 1e-5; a channel kept or removed wrongly gives 0.05-0.7.
SPEEDUP_TOLERANCE = 1e-4
GROUPINGS = ("dependency", "layer")
ALLOCATIONS = ("uniform", "global")


class MaskError(ValueError):
    """A plugin's masks do not fit the model or do not honour the rate."""


class ScoreError(ValueError):
    """A scoring plugin's scores do not fit the selected layers."""


class SpeedupMismatch(RuntimeError):
    """The sped-up model does not compute what the masked model computes."""


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
    # ModelSpeedup rewrites the masks it is given (its conflict fix): give it copies.
    masks = {name: {param: mask.clone() for param, mask in by_param.items()} for name, by_param in masks.items()}
    with quiet_nni():
        graph = torch.fx.symbolic_trace(model)
        ModelSpeedup(model, dummy, masks, graph_module=graph, logger=_QUIET_LOGGER).speedup_model()
    return model.eval()  # replaced batch-norm layers come back in train mode


def check_scores(model: nn.Module, scores: dict[str, torch.Tensor], layers: list[str]) -> None:
    """Raise ScoreError unless `scores` holds, for every selected layer and no other, one
    finite, non-negative score per output filter."""
    if not isinstance(scores, dict):
        raise ScoreError(f"scores must be a dict of layer name -> tensor, got {type(scores).__name__}")
    outside = sorted(set(scores) - set(layers))
    if outside:
        raise ScoreError(f"scores for modules outside the selected layers: {outside[:5]}")
    missing = [name for name in layers if name not in scores]
    if missing:
        raise ScoreError(f"no scores for selected layers {missing[:5]}: score every layer of `layers`")
    modules = dict(model.named_modules())
    for name in layers:
        filters = modules[name].weight.shape[0]
        score = scores[name]
        if not isinstance(score, torch.Tensor) or score.numel() != filters:
            count = score.numel() if isinstance(score, torch.Tensor) else type(score).__name__
            raise ScoreError(f"scores for {name}: {count} values for {filters} output filters")
        if not bool(torch.isfinite(score).all()) or bool((score < 0).any()):
            raise ScoreError(f"scores for {name} must be finite and non-negative")


@dataclass
class Choice:
    """What a plugin returned: scores (a ScoringPlugin) or masks."""

    scores: dict[str, torch.Tensor] | None = None
    masks: Masks | None = None


def run_plugin(plugin: PrunerPlugin, model: nn.Module, rate: float, layers: list[str],
               data: Batches | None) -> Choice:
    """Run the plugin on a copy of `model` in eval mode and check what it returns."""
    if isinstance(plugin, ScoringPlugin):
        scores = plugin.scores(copy.deepcopy(model).eval(), list(layers), data)
        check_scores(model, scores, layers)
        return Choice(scores={name: scores[name].detach().float().cpu().flatten() for name in layers})
    masks = plugin.masks(copy.deepcopy(model).eval(), rate, list(layers), data)
    check_masks(model, masks, layers, rate)
    return Choice(masks=masks)


@dataclass
class Plan:
    """What speedup is given, and the channels of each group it will remove."""

    masks: Masks
    removal: Removal


def plan_pruning(model: nn.Module, groups: list[Group], choice: Choice, layers: list[str], rate: float,
                 grouping: str, allocation: str, round_to: int = 1) -> Plan:
    """`grouping: dependency`: one choice per group (from scores at the `allocation`, or by
    the members' votes, each group keeping a multiple of `round_to` channels), masks for
    all its members. `grouping: layer`: each layer's own masks, as NNI's pruners give
    them; speedup then keeps, in each group, every channel one of its layers keeps
    (`removal_by_union`)."""
    if grouping == "layer":
        if allocation != "uniform":
            raise ValueError("grouping: layer prunes each layer at the rate; allocation must be uniform")
        if round_to != 1:
            raise ValueError("grouping: layer keeps what NNI's per-layer masks leave; round_to needs grouping: "
                             "dependency")
        masks = choice.masks if choice.masks is not None else filter_masks_from_scores(
            model, layers, choice.scores, rate)
        return Plan(masks, removal_by_union(model, groups, masks))
    if grouping != "dependency":
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    if choice.scores is not None:
        removal = removal_from_scores(groups, choice.scores, rate, allocation, round_to)
    elif allocation != "uniform":
        raise ValueError("allocation: global ranks scores; this plugin returns only masks")
    else:
        removal = removal_by_votes(model, groups, choice.masks, round_to)
    return Plan(group_masks(model, groups, removal), removal)


def output_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every module whose output channels speedup may change."""
    return {name: module.weight.shape[0] for name, module in model.named_modules()
            if isinstance(module, ZEROABLE)}


def fixed_batch(image_size: int) -> torch.Tensor:
    """The inputs the sped-up and the masked model are compared on: the same every trial."""
    return torch.randn(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def prune_and_verify(model: nn.Module, groups: list[Group], plan: Plan, image_size: int) -> float:
    """Speed `model` up with the plan's masks (in place) and compare it with the masked
    model on a fixed batch, both in eval mode. Returns the largest absolute logit
    difference; raises SpeedupMismatch above the tolerance, naming the layers whose
    output channels differ from what the plan removes."""
    reference = masked_reference(model, groups, plan.removal)
    before = output_channels(model)
    speedup(model, plan.masks, image_size)
    batch = fixed_batch(image_size)
    with torch.no_grad():
        expected, actual = reference(batch), model(batch)
    difference = float((expected - actual).abs().max())
    tolerance = SPEEDUP_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not difference <= tolerance:
        rows = removed_rows(groups, plan.removal)
        after = output_channels(model)
        differ = [f"{name} keeps {after.get(name)} of {n}, the masks {n - len(rows.get(name, ()))}"
                  for name, n in before.items() if after.get(name) != n - len(rows.get(name, ()))]
        where = ("; ".join(differ[:8]) + (f" (and {len(differ) - 8} more)" if len(differ) > 8 else "")
                 if differ else "every layer keeps as many channels as the masks say")
        raise SpeedupMismatch(f"the sped-up model differs from the masked model by {difference:.3g} in its "
                              f"logits (tolerance {tolerance:.3g}): {where}")
    return difference


def pruned_channels(model: nn.Module, layers: list[str], filters_before: dict[str, int]) -> dict[str, list[int]]:
    """{layer: [output filters kept, filters before]} for every selected layer of the
    sped-up `model`."""
    modules = dict(model.named_modules())
    return {name: [modules[name].weight.shape[0], filters_before[name]] for name in layers}


def channel_sparsity(channels: dict[str, list[int]]) -> float:
    """Filters removed / filters of the selected layers."""
    total = sum(before for _, before in channels.values())
    return 1 - sum(kept for kept, _ in channels.values()) / total if total else 0.0
