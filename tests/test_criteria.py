"""l1norm, l2norm and fpgm score filters by the criteria of NNI's L1NormPruner,
L2NormPruner and FPGMPruner: each layer's masks are NNI's pruner's, and the masks by group
are NNI's pruner's given the same groups (`dependency_group_id`). A change in NNI's
criteria shows here."""
from __future__ import annotations

import copy

import pytest
import torch

from model_zoo import create_model
from sweep_service.coordinator.config import LayerSelection
from sweep_service.nni_adapter import pruner_class
from sweep_service.plugins import get_plugin
from sweep_service.quiet import quiet_nni
from sweep_service.worker.groups import channel_groups, removal_count
from sweep_service.worker.pruning import Choice, plan_pruning, select_layers

NNI_PRUNERS = {"l1norm": "L1NormPruner", "l2norm": "L2NormPruner", "fpgm": "FPGMPruner"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_and_layers(name: str):
    torch.manual_seed(0)
    model = create_model(name, weights="none").eval()
    return model, select_layers(model, name, LayerSelection().model_dump())


def nni_masks(model, pruner: str, config_list: list[dict]):
    with quiet_nni():
        _, masks = pruner_class(NNI_PRUNERS[pruner])(copy.deepcopy(model), config_list).compress()
    return masks


@pytest.mark.parametrize("pruner", NNI_PRUNERS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_each_layers_masks_are_those_of_nnis_pruner(name, pruner):
    model, layers = model_and_layers(name)
    plugin = get_plugin(pruner).create()
    for rate in (0.3, 0.6):
        ours = plugin.masks(copy.deepcopy(model), rate, layers, None)
        theirs = nni_masks(model, pruner, [{"op_names": layers, "sparse_ratio": rate}])
        assert set(ours) == set(layers) <= set(theirs)
        differ = [n for n in layers if not torch.equal(ours[n]["weight"], theirs[n]["weight"].to(ours[n]["weight"]))]
        assert not differ, (rate, differ)


@pytest.mark.parametrize("pruner", NNI_PRUNERS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_masks_by_group_are_those_of_nnis_pruner_given_the_same_groups(name, pruner):
    """NNI averages the members' criteria over a dependency group, as the service does.
    At 50 % of an even number of channels NNI's rounding down and the service's rounding
    to the nearest remove as many. Blocked groups (coupled to the stem) are left out: NNI
    does not know that speedup cannot shrink them."""
    model, layers = model_and_layers(name)
    groups = channel_groups(model, layers, 32)
    prunable = [g for g in groups if g.prunable]
    assert all(removal_count(0.5, g.channels) == int(0.5 * g.channels) for g in prunable)
    assert any(len(g.members) > 1 for g in prunable)
    scores = get_plugin(pruner).create().scores(copy.deepcopy(model), layers, None)
    plan = plan_pruning(model, groups, Choice(scores=scores), layers, 0.5, "dependency", "uniform")
    theirs = nni_masks(model, pruner, [{"op_names": g.members, "sparse_ratio": 0.5, "dependency_group_id": g.root}
                                       for g in prunable])
    members = [m for g in prunable for m in g.members]
    differ = [m for m in members
              if not torch.equal(plan.masks[m]["weight"], theirs[m]["weight"].to(plan.masks[m]["weight"]))]
    assert not differ, differ
