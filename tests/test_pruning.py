"""Real NNI pruning and ModelSpeedup on every model and every built-in pruner, per layer
and by channel group."""
from __future__ import annotations

import copy

import pytest
import torch

from model_zoo import create_model, list_models, model_info
from sweep_service.plugins import get_plugin
from sweep_service.worker.groups import channel_groups
from sweep_service.worker.measure import count_macs, count_params
from sweep_service.worker.pruning import (
    Choice,
    MaskError,
    channel_sparsity,
    check_masks,
    plan_pruning,
    prune_and_verify,
    pruned_channels,
    select_layers,
    speedup,
)
from tests.conftest import trained_like

DEFAULT_LAYERS = {"types": ["Conv2d"], "include_first_conv": False, "include_classifier": False, "exclude": []}


def prune(name: str, pruner: str, rate: float, model=None):
    """Each layer's masks (`grouping: layer`), checked and sped up."""
    size = model_info(name).min_input_size
    if model is None:
        torch.manual_seed(0)
        model = create_model(name, weights="none").eval()
    before = count_params(model), count_macs(model, size)
    layers = select_layers(model, name, DEFAULT_LAYERS)
    masks = get_plugin(pruner).create().masks(copy.deepcopy(model), rate, layers, None)
    check_masks(model, masks, layers, rate)
    speedup(model, masks, size)
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 10)
    return before, (count_params(model), count_macs(model, size))


@pytest.mark.parametrize("name", list_models())
def test_every_model_prunes_and_speeds_up(name):
    """Both groupings on one model (built once: vgg16 takes seconds). By group (the
    default), speedup removes exactly the chosen channels: the sped-up model computes what
    the masked model computes, and each pruned group is at the rate."""
    model = trained_like(name)
    (params_before, macs_before), (params_after, macs_after) = prune(name, "l1norm", 0.5, copy.deepcopy(model))
    assert params_after < params_before and macs_after < macs_before

    size = model_info(name).min_input_size
    layers = select_layers(model, name, DEFAULT_LAYERS)
    groups = channel_groups(model, layers, size)
    scores = get_plugin("l1norm").create().scores(model, layers, None)
    plan = plan_pruning(model, groups, Choice(scores=scores), layers, 0.3, "dependency", "uniform")
    filters = {n: model.get_submodule(n).weight.shape[0] for n in layers}
    assert prune_and_verify(model, groups, plan, size) <= 1e-4
    channels = pruned_channels(model, layers, filters)
    for group in groups:
        kept = group.channels - (len(plan.removal[group.root]) if group.prunable else 0)
        assert {channels[m][0] for m in group.members} == {kept}, group.members
        if group.prunable:
            assert abs(1 - kept / group.channels - 0.3) <= 0.05, group.members
    assert 0.25 < channel_sparsity(channels) <= 0.31
    assert count_params(model) < params_before and count_macs(model, size) < macs_before


@pytest.mark.parametrize("pruner", ["l1norm", "l2norm", "fpgm"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_builtin_pruners_reduce_more_at_higher_rates(name, pruner):
    reductions = [1 - after[0] / before[0] for before, after in (prune(name, pruner, r) for r in (0.2, 0.6))]
    assert 0 < reductions[0] < reductions[1]


def test_layer_selection_excludes_stem_and_classifier():
    model = create_model("resnet18")
    layers = select_layers(model, "resnet18", DEFAULT_LAYERS)
    assert "conv1" not in layers and "fc" not in layers and "layer1.0.conv1" in layers
    with_all = select_layers(model, "resnet18", {**DEFAULT_LAYERS, "include_first_conv": True,
                                                 "types": ["Conv2d", "Linear"], "include_classifier": True})
    assert {"conv1", "fc"} <= set(with_all)


def test_check_masks_rejects_bad_masks():
    model = create_model("resnet18")
    layers = select_layers(model, "resnet18", DEFAULT_LAYERS)
    weight = model.get_submodule("layer1.0.conv1").weight
    with pytest.raises(MaskError, match="shape"):
        check_masks(model, {"layer1.0.conv1": {"weight": torch.ones(3, 3)}}, layers, 0.05)
    with pytest.raises(MaskError, match="outside the selected layers"):
        check_masks(model, {"conv1": {"weight": torch.ones_like(model.conv1.weight)}}, layers, 0.05)
    with pytest.raises(MaskError, match="does not honour the rate"):
        check_masks(model, {"layer1.0.conv1": {"weight": torch.ones_like(weight)}}, layers, 0.5)
