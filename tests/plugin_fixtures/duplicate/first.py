import torch

from sweep_service.plugins import PrunerPlugin, filter_masks_from_scores


class Twin(PrunerPlugin):
    name = "twin"
    description = "Test fixture: one of two plugins named twin"

    def masks(self, model, rate, layers, data):
        scores = {n: torch.arange(model.get_submodule(n).weight.shape[0]) for n in layers}
        return filter_masks_from_scores(model, layers, scores, rate)
