"""Channel groups: layers whose output channels can only be removed together.

A residual addition makes the convs it adds share their output channels; a depthwise
conv has the channels of the conv feeding it; an SE block multiplies a conv's output by
another's. Torch-Pruning's DependencyGraph finds every such coupling by tracing the
model; each of its groups becomes a `Group` here. Removing channel c of a group removes
output channel c of every member at once, so one choice of channels per group is what
NNI's ModelSpeedup can remove exactly.

The rules that choose a group's channels, from a plugin's scores or masks, are here too
(`removal_from_scores`, `removal_by_votes`), with the prediction of what speedup keeps
from per-layer masks (`removal_by_union`), the masks that make speedup remove a choice
(`group_masks`), and the masked model the sped-up one must equal (`masked_reference`).
A choice is ``{group root: LongTensor of the group channels removed}``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from sweep_service.plugins import Masks

# Modules whose output channels `masked_reference` can zero (weight rows and bias).
ZEROABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

Removal = dict[str, torch.Tensor]


@dataclass
class Group:
    root: str  # the module Torch-Pruning built the group from
    channels: int
    members: list[str]  # selected layers whose output channels are the group's
    # Every module with parameters whose output channels follow the group (members, depthwise
    # convs, batch norms...): index[c] is that module's channel for group channel c. Not
    # always c: in densenet a later layer's batch norm reads a channel at an offset.
    out_members: dict[str, torch.Tensor] = field(default_factory=dict)
    depthwise: list[str] = field(default_factory=list)  # depthwise convs following the group
    unselected: list[str] = field(default_factory=list)  # convs/linears among out_members not selected
    blocked_by: str = ""  # why the group cannot be pruned; empty if it can

    @property
    def prunable(self) -> bool:
        return not self.blocked_by


def channel_groups(model: nn.Module, layers: list[str], image_size: int) -> list[Group]:
    """The groups that hold the selected `layers`, each selected layer in exactly one, in
    the order of their first member in the model.

    A group is blocked (not pruned) when an unselected conv or linear shares its channels
    (the stem conv, the classifier, an excluded layer: pruning the group would prune it),
    when a grouped but not depthwise conv follows it, or when a member has parameters
    whose channels `masked_reference` cannot zero.
    """
    import torch_pruning as tp

    selected = set(layers)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    was_training = model.training
    with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.rand(1, 3, image_size, image_size), verbose=False)
    model.train(was_training)  # the trace puts the model in eval mode
    groups, seen = [], {}
    for tp_group in graph.get_all_groups(ignored_layers=[], root_module_types=[nn.Conv2d, nn.Linear]):
        group = Group(root=names[tp_group[0].dep.target.module], channels=len(tp_group[0].idxs), members=[])
        for item in tp_group:
            module = item.dep.target.module
            name = names.get(module) if isinstance(module, nn.Module) else None
            # Torch-Pruning's stand-ins for additions, concatenations, reshapes have no
            # parameters; in-channel dependencies follow from the out-channels removed.
            if name is None or not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            index = torch.full((group.channels,), -1, dtype=torch.long)
            index[torch.as_tensor(item.root_idxs, dtype=torch.long)] = torch.as_tensor(item.idxs, dtype=torch.long)
            if (index < 0).any():
                raise ValueError(f"group of {group.root}: {name} does not follow every channel of the group")
            group.out_members[name] = index
            _classify(group, name, module, selected)
        if not group.members:
            continue
        for name in group.members:
            if name in seen:
                raise ValueError(f"{name} is in the groups of {seen[name]} and {group.root}")
            seen[name] = group.root
        group.members.sort(key=order.get)
        group.out_members = dict(sorted(group.out_members.items(), key=lambda item: order[item[0]]))
        if not group.blocked_by and group.unselected:
            group.blocked_by = f"coupled with unselected {', '.join(group.unselected)}"
        groups.append(group)
    missing = [name for name in layers if name not in seen]
    if missing:
        raise ValueError(f"selected layers in no channel group: {missing}")
    return sorted(groups, key=lambda g: order[g.members[0]])  # in the model's order


def _classify(group: Group, name: str, module: nn.Module, selected: set[str]) -> None:
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        if module.groups == module.in_channels == module.out_channels:
            group.depthwise.append(name)
        else:
            group.blocked_by = group.blocked_by or f"grouped conv {name} follows"
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        (group.members if name in selected else group.unselected).append(name)
    elif not isinstance(module, ZEROABLE) and any(p is not None for p in module.parameters(recurse=False)):
        group.blocked_by = group.blocked_by or f"{name} ({type(module).__name__}) cannot be masked"


def removal_count(rate: float, channels: int) -> int:
    """Channels a group of `channels` loses at `rate`: the nearest whole number, keeping one.

    Nearest rather than NNI's round-down: small groups (4 or 6 channels in efficientnet's
    squeeze-excitation) would otherwise sit far below the rate.
    """
    return min(math.floor(rate * channels + 0.5), channels - 1)


def rounded_removal(removed: int, channels: int, round_to: int) -> int:
    """Channels a group of `channels` loses so that it keeps a multiple of `round_to`: the
    multiple nearest to what losing `removed` keeps (a tie keeps more), at least one
    `round_to`, at most every channel. A group of at most `round_to` channels loses
    `removed`.

    Why: CPU convolution kernels work on blocks of channels (8 or 16 at a time in ONNX
    Runtime's), and a layer of, say, 179 channels falls back to a slower path; the model
    can then run slower than the unpruned one (docs/edge.md). Torch-Pruning's `round_to`
    serves the same purpose.
    """
    if round_to <= 1 or channels <= round_to:
        return removed
    kept = max(round_to, round_to * math.floor((channels - removed) / round_to + 0.5))
    return max(0, channels - kept)


def group_scores(group: Group, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """One score per group channel: the mean of the members' scores of that channel.

    The mean, as Torch-Pruning's group importance reduces by default and as NNI's pruners
    fuse the metrics of a dependency group, so a channel counts by its whole group rather
    than by the one member a per-layer rule would look at.
    """
    return torch.stack([torch.as_tensor(scores[m]).detach().float().cpu().flatten()[group.out_members[m]]
                        for m in group.members]).mean(dim=0)


def removal_from_scores(groups: list[Group], scores: dict[str, torch.Tensor], rate: float,
                        allocation: str, round_to: int = 1) -> Removal:
    """The channels to remove, lowest group score first.

    uniform: each prunable group loses `removal_count(rate, channels)` channels.
    global: channels of all prunable groups are ranked together, each group's scores divided
        by the group's mean score (Torch-Pruning's default "mean" normaliser): a channel
        then counts by how it compares with its own group's typical channel, so groups
        whose raw scores run larger (norms grow with a layer's fan-in) are not spared for
        that alone. Channels go lowest first until as many filters of the selected layers
        are removed as `uniform` removes at the rate (a channel removes one filter per
        member), each group keeping at least one channel. The two allocations at one rate
        remove equally many filters and differ only in where.
    With `round_to`, each group's count is then rounded (`rounded_removal`), so the total
    is near that of the rate rather than equal to it.
    """
    prunable = [g for g in groups if g.prunable]
    ranked = {g.root: group_scores(g, scores) for g in prunable}
    if allocation == "uniform":
        return {g.root: _lowest(ranked[g.root], rounded_removal(removal_count(rate, g.channels), g.channels, round_to))
                for g in prunable}
    if allocation != "global":
        raise ValueError(f"allocation must be 'uniform' or 'global', got {allocation!r}")
    budget = sum(removal_count(rate, g.channels) * len(g.members) for g in prunable)
    normalised = [ranked[g.root] / ranked[g.root].mean().clamp_min(torch.finfo(torch.float32).tiny)
                  for g in prunable]
    owner = torch.cat([torch.full((g.channels,), i) for i, g in enumerate(prunable)])
    channel = torch.cat([torch.arange(g.channels) for g in prunable])
    # ties: the group that comes first in the model, then the lower channel
    order = torch.argsort(torch.cat(normalised), stable=True)
    removable = [g.channels - 1 for g in prunable]
    chosen: list[list[int]] = [[] for _ in prunable]
    spent = 0
    for i, c in zip(owner[order].tolist(), channel[order].tolist()):
        cost = len(prunable[i].members)
        if removable[i] and spent + cost <= budget:
            chosen[i].append(c)
            removable[i] -= 1
            spent += cost
            if spent == budget:
                break
    if round_to > 1:  # a group's lowest channels by its normalised scores, as many as rounded
        return {g.root: _lowest(normalised[i], rounded_removal(len(chosen[i]), g.channels, round_to))
                for i, g in enumerate(prunable)}
    return {g.root: torch.tensor(sorted(c), dtype=torch.long) for g, c in zip(prunable, chosen)}


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` lowest `values` (ties: the lower index), in order."""
    return torch.sort(torch.argsort(values, stable=True)[:count]).values


def removed_filters(mask: dict[str, torch.Tensor] | None, filters: int) -> torch.Tensor:
    """Bool per output filter: wholly masked (the only masked weights speedup removes)."""
    if mask is None or mask.get("weight") is None:
        return torch.zeros(filters, dtype=torch.bool)
    return (mask["weight"].reshape(filters, -1) == 0).all(dim=1).cpu()


def removal_by_votes(model: nn.Module, groups: list[Group], masks: Masks, round_to: int = 1) -> Removal:
    """One choice per group from a plugin's per-layer masks.

    Each member votes for the channels its mask removes (a member without a mask removes
    none). The group loses as many channels as its members remove on average (rounded to
    the nearest, keeping one; then by `rounded_removal`), those with the most votes; among
    channels with equally many votes, the lower channel index goes first. A group of one
    layer keeps exactly its layer's mask when `round_to` is 1.
    """
    modules = dict(model.named_modules())
    removal = {}
    for g in groups:
        if not g.prunable:
            continue
        votes = torch.zeros(g.channels)
        removed = 0
        for m in g.members:
            filters = removed_filters(masks.get(m), modules[m].weight.shape[0])
            votes += filters[g.out_members[m]].float()
            removed += int(filters.sum())
        count = rounded_removal(min(math.floor(removed / len(g.members) + 0.5), g.channels - 1), g.channels,
                                round_to)
        removal[g.root] = _lowest(-votes, count)
    return removal


def removal_by_union(model: nn.Module, groups: list[Group], masks: Masks) -> Removal:
    """What NNI's ModelSpeedup removes when given per-layer masks (`grouping: layer`): in
    each group, only the channels that every conv and linear of the group masks as a
    whole filter. A coupled layer without a mask (a depthwise conv, the stem, an excluded
    layer) keeps every channel, so its group loses none."""
    modules = dict(model.named_modules())
    removal = {}
    for g in groups:
        layers = g.members + g.depthwise + g.unselected
        if not all(name in masks for name in layers):
            continue
        removed = torch.ones(g.channels, dtype=torch.bool)
        for name in layers:
            removed &= removed_filters(masks[name], modules[name].weight.shape[0])[g.out_members[name]]
        removal[g.root] = removed.nonzero().flatten()
    return removal


def group_masks(model: nn.Module, groups: list[Group], removal: Removal) -> Masks:
    """NNI-style masks for every member and depthwise follower of each group that loses a
    channel. The depthwise convs need masks too: NNI's speedup treats a coupled conv
    without a mask as keeping every channel, and keeps the union."""
    modules = dict(model.named_modules())
    by_root = {g.root: g for g in groups}
    masks: Masks = {}
    for root, channels in removal.items():
        if len(channels) == 0:
            continue
        g = by_root[root]
        for name in g.members + g.depthwise:
            module = modules[name]
            keep = torch.ones(module.weight.shape[0], dtype=module.weight.dtype, device=module.weight.device)
            keep[g.out_members[name][channels]] = 0
            shape = (-1, *[1] * (module.weight.dim() - 1))
            masks[name] = {"weight": keep.view(shape).expand_as(module.weight).clone()}
            if module.bias is not None:
                masks[name]["bias"] = keep.clone()
    return masks


def removed_rows(groups: list[Group], removal: Removal) -> dict[str, set[int]]:
    """Module name -> its output channels the removal takes away (a module that follows
    several groups, as densenet's batch norms do, loses the channels of each)."""
    by_root = {g.root: g for g in groups}
    rows: dict[str, set[int]] = {}
    for root, channels in removal.items():
        for name, index in by_root[root].out_members.items():
            rows.setdefault(name, set()).update(index[channels].tolist())
    return rows


@torch.no_grad()
def masked_reference(model: nn.Module, groups: list[Group], removal: Removal) -> nn.Module:
    """A copy of `model` that computes what the sped-up model computes: in every module
    that follows a group, the removed channels' weight rows and biases are zeroed. For a
    batch norm both go, so that the channel outputs zero as a removed channel does (its
    shift, bias - mean * weight / std, would otherwise remain)."""
    reference = copy.deepcopy(model).eval()
    modules = dict(reference.named_modules())
    for name, rows in removed_rows(groups, removal).items():
        if not rows:
            continue
        module = modules[name]
        if not isinstance(module, ZEROABLE):
            raise TypeError(f"cannot zero the output channels of {name} ({type(module).__name__})")
        index = torch.tensor(sorted(rows), dtype=torch.long)
        module.weight[index] = 0
        if module.bias is not None:
            module.bias[index] = 0
    return reference
