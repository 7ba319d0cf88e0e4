"""The control that pruning criteria are judged against: remove random filters."""
import torch

from sweep_service.plugins import PrunerPlugin, filter_masks_from_scores


class RandomFilters(PrunerPlugin):
    name = "random"
    description = "Random baseline: removes a random rate of output filters in each layer (seeded by the trial's seed)"

    def masks(self, model, rate, layers, data):
        # The trial seeds torch with the config's `seed`: the same seed gives the same masks.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        modules = dict(model.named_modules())
        scores = {name: torch.rand(modules[name].weight.shape[0], generator=generator) for name in layers}
        return filter_masks_from_scores(model, layers, scores, rate)
