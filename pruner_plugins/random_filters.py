"""The control that pruning criteria are judged against: remove random filters."""
import torch

from sweep_service.plugins import ScoringPlugin


class RandomFilters(ScoringPlugin):
    name = "random"
    description = "Random baseline: removes random output filters at the rate (seeded by the trial's seed)"

    def scores(self, model, layers, data):
        # The trial seeds torch with the config's `seed`: the same seed gives the same scores.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        return {name: torch.rand(model.get_submodule(name).weight.shape[0], generator=generator) for name in layers}
