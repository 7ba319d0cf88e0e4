"""Real NNI pruning and ModelSpeedup on every model and every built-in pruner."""
from __future__ import annotations

import copy

import pytest
import torch

from model_zoo import create_model, list_models, model_info
from sweep_service.plugins import get_plugin
from sweep_service.worker.measure import count_macs, count_params
from sweep_service.worker.pruning import MaskError, check_masks, select_layers, speedup

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
