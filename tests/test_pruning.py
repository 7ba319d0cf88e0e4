"""Real NNI pruning and ModelSpeedup on every model and every built-in pruner."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from model_zoo import create_model, list_models, model_info
from sweep_service.measure import count_macs, count_params
from sweep_service.plugins import get_plugin
from sweep_service.pruning import MaskError, check_masks, select_layers, speedup

DEFAULT_LAYERS = {"types": ["Conv2d"], "include_first_conv": False, "include_classifier": False, "exclude": []}


def prune(name: str, pruner: str, rate: float):
    size = model_info(name).min_input_size
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
    (params_before, macs_before), (params_after, macs_after) = prune(name, "l1norm", 0.5)
    assert params_after < params_before and macs_after < macs_before


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


def test_vectorized_fpgm_picks_the_same_filters_as_nni():
    import nni.compression.pruning as nni_pruning

    from sweep_service.nni_adapter import pruner_class

    torch.manual_seed(0)
    model = create_model("resnet18", weights="none").eval()
    layers = select_layers(model, "resnet18", DEFAULT_LAYERS)
    found = []
    for cls in (nni_pruning.FPGMPruner, pruner_class("FPGMPruner")):
        pruner = cls(copy.deepcopy(model), [{"op_names": layers, "sparse_ratio": 0.5}])
        _, masks = pruner.compress()
        found.append({name: by_param["weight"] for name, by_param in masks.items()})
    assert pruner_class("FPGMPruner") is not nni_pruning.FPGMPruner
    assert found[0].keys() == found[1].keys() == set(layers)
    assert all(torch.equal(found[0][name], found[1][name]) for name in layers)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_prune_dimension_check_agrees_with_nni(name):
    from nni.compression.speedup.mask_conflict import detect_mask_prune_dim as nni_detect

    from sweep_service.pruning import detect_mask_prune_dim

    model = create_model(name, weights="none").eval()
    layers = select_layers(model, name, DEFAULT_LAYERS)
    filters = get_plugin("l1norm").create().masks(copy.deepcopy(model), 0.5, layers, None)
    channels = {layer: {"weight": by_param["weight"].transpose(0, 1).contiguous()}
                for layer, by_param in filters.items()
                if by_param["weight"].shape[0] == by_param["weight"].shape[1]}
    for masks in (filters, channels, {}):
        assert detect_mask_prune_dim(model, masks) == nni_detect(model, masks)
    assert detect_mask_prune_dim(model, filters) == 0
    assert not channels or detect_mask_prune_dim(model, channels) == 1  # mobilenet_v2 has no square convs


@pytest.mark.parametrize("groups, in_kept, out_kept", [
    (8, [0, 2, 3, 5, 7], [0, 2, 3, 5, 7]),  # depthwise, as speedup sees mobilenet_v2's
    (4, [0, 1, 8, 9, 12, 13], [0, 3, 4, 16, 19, 20, 24, 27, 28]),  # 3 of 4 groups left, 2 in / 3 out each
    (4, [0, 1, 8], [0, 3, 16]),  # unbalanced groups: NNI's error
])
def test_grouped_conv_replacement_matches_nni(groups, in_kept, out_kept):
    from nni.compression.speedup import replacement

    from sweep_service.pruning import _replace_grouped_conv2d

    in_channels = 8 if groups == 8 else 16
    out_channels = 8 if groups == 8 else 32
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=True)
    in_mask, out_mask = torch.zeros(1, in_channels, 4, 4), torch.zeros(1, out_channels, 4, 4)
    in_mask[:, in_kept], out_mask[:, out_kept] = 1, 1
    masks = ([in_mask], out_mask, {"weight": torch.ones_like(conv.weight)})
    fast = _replace_grouped_conv2d(replacement.replace_conv2d)
    with torch.no_grad():  # as ModelSpeedup calls them
        try:
            expected = replacement.replace_conv2d(conv, masks)
        except Exception as exc:
            with pytest.raises(type(exc)):
                fast(conv, masks)
            return
        found = fast(conv, masks)
    assert (found.in_channels, found.out_channels, found.groups) == (expected.in_channels, expected.out_channels,
                                                                     expected.groups)
    assert torch.equal(found.weight, expected.weight) and torch.equal(found.bias, expected.bias)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_in_memory_speedup_matches_nni(name):
    """speedup_in_memory keeps the weights in memory where NNI's speedup_model writes them to
    a file: the same pruned model, weight for weight."""
    from nni.compression.speedup import ModelSpeedup

    from sweep_service.pruning import speedup_in_memory

    torch.manual_seed(0)
    model = create_model(name, weights="none").eval()
    layers = select_layers(model, name, DEFAULT_LAYERS)
    masks = get_plugin("l1norm").create().masks(copy.deepcopy(model), 0.5, layers, None)
    dummy = torch.rand(1, 3, 32, 32)
    results = []
    for run in (lambda job: job.speedup_model(), speedup_in_memory):
        pruned = copy.deepcopy(model)
        job = ModelSpeedup(pruned, dummy, copy.deepcopy(masks), graph_module=torch.fx.symbolic_trace(pruned),
                           logger=logging.getLogger("sweep_service.speedup"))  # ours: errors only
        run(job)
        results.append(pruned.state_dict())
    nni_weights, ours = results
    assert list(ours) == list(nni_weights)
    assert all(torch.equal(ours[k], nni_weights[k]) for k in ours)
    assert count_params(pruned) < count_params(model)
