"""The criteria of NNI's L1NormPruner, L2NormPruner and FPGMPruner, as scores.

Computed here rather than by running NNI's pruners so that the service can score whole
groups of coupled layers and rank them across groups. tests/test_groups.py checks that
each layer's masks equal those of NNI's pruner, and the grouped masks those of NNI's
pruner given the same groups, so a change in NNI shows as a failing test.
"""
import torch

from sweep_service.plugins import ScoringPlugin


def filters(model, name):
    """The layer's weight with one row per output filter."""
    weight = model.get_submodule(name).weight.detach()
    return weight.reshape(weight.shape[0], -1)


class L1Norm(ScoringPlugin):
    name = "l1norm"
    description = "The criterion of NNI's L1NormPruner: removes the output filters with the smallest L1 norm"

    def scores(self, model, layers, data):
        return {name: filters(model, name).norm(p=1, dim=1) for name in layers}


class L2Norm(ScoringPlugin):
    name = "l2norm"
    description = "The criterion of NNI's L2NormPruner: removes the output filters with the smallest L2 norm"

    def scores(self, model, layers, data):
        return {name: filters(model, name).norm(p=2, dim=1) for name in layers}


class FPGM(ScoringPlugin):
    name = "fpgm"
    description = "The criterion of NNI's FPGMPruner: removes the filters nearest the layer's geometric median"

    def scores(self, model, layers, data):
        # A filter's summed distance to the layer's other filters: the smallest sums lie
        # nearest the geometric median, where the other filters can stand in for them. One
        # distance matrix per layer rather than NNI's loop over filters.
        return {name: torch.cdist(filters(model, name), filters(model, name)).sum(dim=1) for name in layers}
