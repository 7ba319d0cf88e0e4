"""Channel groups (Torch-Pruning's dependency graph on the zoo's models), the rules that
choose a group's channels, and the check that speedup removes exactly what was chosen."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model_zoo import create_model, model_info
from sweep_service.coordinator.config import LayerSelection
from sweep_service.plugins import load_plugins
from sweep_service.worker.groups import (
    channel_groups,
    removal_by_union,
    removal_by_votes,
    removal_count,
    removal_from_scores,
    rounded_removal,
)
from sweep_service.worker.pruning import (
    Choice,
    Plan,
    SpeedupMismatch,
    channel_sparsity,
    filter_masks_from_scores,
    plan_pruning,
    prune_and_verify,
    pruned_channels,
    select_layers,
)
from tests.conftest import trained_like

LAYERS = LayerSelection().model_dump()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def groups_of(name: str):
    model = trained_like(name)
    layers = select_layers(model, name, LAYERS)
    return model, layers, channel_groups(model, layers, model_info(name).min_input_size)


def by_member(groups):
    return {member: g for g in groups for member in g.members}


# the groups ---------------------------------------------------------------------------------
def test_residual_stages_are_one_group_and_the_stem_blocks_the_first():
    model, layers, groups = groups_of("resnet18")
    member_of = by_member(groups)
    assert sorted(member_of) == sorted(layers)  # every selected layer in exactly one group
    stage = member_of["layer2.0.conv2"]
    assert stage.members == ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    assert {"layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"} <= set(stage.out_members)
    assert stage.prunable and stage.channels == 128
    first = member_of["layer1.0.conv2"]
    assert first.members == ["layer1.0.conv2", "layer1.1.conv2"]
    assert not first.prunable and first.blocked_by == "coupled with unselected conv1"
    assert member_of["layer3.1.conv1"].members == ["layer3.1.conv1"]


def test_depthwise_convs_and_squeeze_excitation_follow_their_producer():
    _, _, groups = groups_of("mobilenet_v2")
    expand = by_member(groups)["features.2.conv.0.0"]
    assert expand.members == ["features.2.conv.0.0"] and expand.depthwise == ["features.2.conv.1.0"]
    _, _, groups = groups_of("efficientnet_b0")
    member_of = by_member(groups)
    block = member_of["features.2.0.block.0.0"]  # expand conv, SE fc2 multiplies its channels
    assert block.members == ["features.2.0.block.0.0", "features.2.0.block.2.fc2"]
    assert block.depthwise == ["features.2.0.block.1.0"] and block.prunable
    # the first block has no expand conv: its SE multiplies the stem's channels
    assert member_of["features.1.0.block.1.fc2"].blocked_by == "coupled with unselected features.0.0"


def test_concatenated_features_are_followed_at_their_offset():
    _, _, groups = groups_of("densenet121")
    group = by_member(groups)["features.denseblock1.denselayer1.conv2"]
    assert group.members == ["features.denseblock1.denselayer1.conv2"] and group.channels == 32
    # denselayer2 reads [block input (64 channels), denselayer1's 32 new ones]
    assert torch.equal(group.out_members["features.denseblock1.denselayer2.norm1"], torch.arange(64, 96))
    assert torch.equal(group.out_members["features.transition1.norm"], torch.arange(64, 96))


def test_finding_groups_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none").train()
    before = copy.deepcopy(model.state_dict())
    channel_groups(model, select_layers(model, "resnet18", LAYERS), 32)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


# the rules -------------------------------------------------------------------------------------
class Fork(nn.Module):
    """Three convs added together (one group of three), and a fourth alone."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a, self.b, self.c = (nn.Conv2d(8, 4, 1) for _ in range(3))
        self.d = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.d(self.a(x) + self.b(x) + self.c(x))
        return self.head(x.mean(dim=(2, 3)))


def fork_groups():
    """The model, its groups, and a function from a removal to each group's channels."""
    model = Fork().eval()
    groups = channel_groups(model, ["a", "b", "c", "d"], 8)
    assert [g.members for g in groups] == [["a", "b", "c"], ["d"]]
    return model, groups, lambda removal: [removal[g.root].tolist() if g.root in removal else None for g in groups]


def filter_mask(model, name, removed):
    weight = model.get_submodule(name).weight
    keep = torch.ones(weight.shape[0])
    keep[list(removed)] = 0
    return {"weight": keep.view(-1, 1, 1, 1).expand_as(weight).clone()}


def test_removal_count_is_the_nearest_whole_number_keeping_one():
    assert [removal_count(0.3, c) for c in (4, 6, 10, 64)] == [1, 2, 3, 19]  # NNI: 1, 1, 3, 19
    assert removal_count(0.99, 5) == 4 and removal_count(0.5, 1) == 0


def test_rounding_keeps_the_nearest_multiple_and_never_empties_a_group():
    # resnet18 at 30 %: 64, 128, 256, 512 channels would keep 45, 90, 179, 358
    assert [c - rounded_removal(removal_count(0.3, c), c, 8) for c in (64, 128, 256, 512)] == [48, 88, 176, 360]
    assert rounded_removal(3, 100, 8) == 4  # keeps 96 rather than 97 of a group that is no multiple
    assert rounded_removal(1, 102, 8) == 0  # 101 is nearer 104 than 96, more than there are: none goes
    assert rounded_removal(60, 64, 8) == 56  # keeps one multiple at least
    assert rounded_removal(2, 6, 8) == 2  # a group smaller than the multiple keeps what the rate gives
    assert rounded_removal(19, 64, 1) == 19
    assert 64 - rounded_removal(20, 64, 8) == 48  # 44 is a tie between 40 and 48: keep more


def test_uniform_takes_the_lowest_mean_member_score_of_each_group():
    model, groups, chosen = fork_groups()
    scores = {"a": torch.tensor([4.0, 0, 9, 1]), "b": torch.tensor([4.0, 9, 0, 1]), "c": torch.tensor([4.0, 0, 0, 1]),
              "d": torch.tensor([3.0, 2, 1, 0])}
    removal = removal_from_scores(groups, scores, 0.5, "uniform")
    # group means [4, 3, 3, 1]: channels 3 and then 1 (tie with 2: the lower index)
    assert chosen(removal) == [[1, 3], [2, 3]]


def test_global_ranks_channels_against_their_own_group_within_uniforms_filter_count():
    model, groups, chosen = fork_groups()
    # Raw scores would take group "a" first (50 < 100); against its own group's mean, each
    # of its channels is typical (1.0) while d's first three are a tenth of d's mean.
    scores = {name: torch.full((4,), 50.0) for name in "abc"} | {"d": torch.tensor([100.0, 100, 100, 3700])}
    removal = removal_from_scores(groups, scores, 0.5, "global")
    assert chosen(removal) == [[0], [0, 1, 2]]
    # uniform at 50 % removes 2 channels x 3 members + 2 x 1 = 8 filters; global stops at 6,
    # as the next channel of "a" would remove 3 more
    uniform = removal_from_scores(groups, scores, 0.5, "uniform")
    assert [len(c) for c in chosen(uniform)] == [2, 2]
    # no group is emptied, whatever its scores
    low = {name: torch.zeros(4) for name in "abc"} | {"d": torch.ones(4)}
    assert chosen(removal_from_scores(groups, low, 0.7, "global"))[0] == [0, 1, 2]


def test_votes_pick_what_most_members_remove_and_as_many_as_they_remove_on_average():
    model, groups, chosen = fork_groups()
    masks = {"a": filter_mask(model, "a", {0, 1}), "b": filter_mask(model, "b", {1, 2}),
             "c": filter_mask(model, "c", {1, 3}), "d": filter_mask(model, "d", {2})}
    # channel 1 has three votes; 0, 2 and 3 one each: the lower index goes
    assert chosen(removal_by_votes(model, groups, masks)) == [[0, 1], [2]]
    # a member without a mask removes nothing: (2 + 2 + 0) / 3 rounds to 1
    del masks["c"]
    assert chosen(removal_by_votes(model, groups, masks))[0] == [1]


def test_union_is_what_every_coupled_layer_removes():
    model, groups, chosen = fork_groups()
    masks = {"a": filter_mask(model, "a", {0, 1}), "b": filter_mask(model, "b", {1, 2}),
             "c": filter_mask(model, "c", {1, 3})}
    assert chosen(removal_by_union(model, groups, masks)) == [[1], None]  # d has no mask: keeps all


# speedup removes what was chosen -----------------------------------------------------------------
def test_layer_grouping_keeps_what_one_coupled_layer_keeps():
    """The reference study's pruning: each layer at the rate, speedup unites coupled masks."""
    for name, layer, kept in [("resnet18", "layer2.0.conv2", 128 - 90), ("mobilenet_v2", "features.2.conv.0.0", 96)]:
        model, layers, groups = groups_of(name)
        scores = load_plugins()["l1norm"].create().scores(model, layers, None)
        plan = plan_pruning(model, groups, Choice(scores=scores), layers, 0.3, "layer", "uniform")
        filters = {n: model.get_submodule(n).weight.shape[0] for n in layers}
        assert plan.masks[layer]["weight"].flatten(1).amax(1).sum() < filters[layer]  # its own mask prunes it
        assert prune_and_verify(model, groups, plan, 32) <= 1e-4
        channels = pruned_channels(model, layers, filters)
        if name == "resnet18":  # layer2's three convs remove different filters; most come back
            assert kept < channels[layer][0] < 128 and channels["layer1.0.conv2"] == [64, 64]
        else:  # the depthwise conv that follows has no mask: nothing goes
            assert channels[layer] == [kept, kept]
        assert channel_sparsity(channels) < 0.2


@pytest.mark.parametrize("name, allocation", [("resnet18", "uniform"), ("resnet18", "global"),
                                              ("mobilenet_v2", "uniform")])
def test_round_to_makes_every_group_keep_a_multiple_and_speedup_removes_exactly_that(name, allocation):
    model, layers, groups = groups_of(name)
    scores = load_plugins()["l1norm"].create().scores(model, layers, None)
    plan = plan_pruning(model, groups, Choice(scores=scores), layers, 0.3, "dependency", allocation, round_to=8)
    filters = {n: model.get_submodule(n).weight.shape[0] for n in layers}
    plain = plan_pruning(model, groups, Choice(scores=scores), layers, 0.3, "dependency", allocation)
    assert prune_and_verify(model, groups, plan, 32) <= 1e-4
    channels = pruned_channels(model, layers, filters)
    grouped = {m for g in groups if g.prunable and g.channels > 8 for m in g.members}
    assert grouped and all(kept % 8 == 0 for n, (kept, _) in channels.items() if n in grouped)
    assert any(kept < before for kept, before in channels.values())
    # the same channels as without rounding, give or take the few that rounding moves
    removed = sum(len(r) for r in plan.removal.values())
    assert abs(removed - sum(len(r) for r in plain.removal.values())) <= 4 * len(plan.removal)


def test_round_to_rounds_what_the_votes_remove():
    """A plugin that returns masks: each group keeps a multiple of 8 of the most voted."""
    model, layers, groups = groups_of("resnet18")
    scores = load_plugins()["l1norm"].create().scores(model, layers, None)
    masks = filter_masks_from_scores(model, layers, scores, 0.3)
    plain, rounded = removal_by_votes(model, groups, masks), removal_by_votes(model, groups, masks, round_to=8)
    for g in (g for g in groups if g.prunable):
        kept, unrounded = g.channels - len(rounded[g.root]), g.channels - len(plain[g.root])
        assert kept % 8 == 0 and abs(kept - unrounded) <= 4 and kept < g.channels
    for root, channels in rounded.items():  # rounding adds or spares the channels nearest the line
        fewer, more = sorted([set(channels.tolist()), set(plain[root].tolist())], key=len)
        assert fewer <= more


def test_a_mismatch_names_the_layers_whose_channels_differ():
    model, layers, groups = groups_of("mobilenet_v2")
    scores = load_plugins()["l1norm"].create().scores(model, layers, None)
    plan = plan_pruning(model, groups, Choice(scores=scores), layers, 0.3, "dependency", "uniform")
    # without the depthwise convs' masks speedup keeps every channel of their groups
    without = Plan({n: m for n, m in plan.masks.items() if n in layers}, plan.removal)
    with pytest.raises(SpeedupMismatch, match=r"differs from the masked model by [\d.e-]+ in its logits .*"
                                               r"features\.2\.conv\.0\.0 keeps 96 of 96, the masks 67"):
        prune_and_verify(copy.deepcopy(model), groups, without, 32)
    # the masks remove other channels than the reference zeroes: counts match, values do not
    shifted = {root: (channels + 1) % next(g.channels for g in groups if g.root == root)
               for root, channels in plan.removal.items()}
    with pytest.raises(SpeedupMismatch, match="every layer keeps as many channels as the masks say"):
        prune_and_verify(model, groups, Plan(plan.masks, shifted), 32)
