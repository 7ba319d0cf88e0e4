"""Example plugin package: removes the filters whose largest absolute weight is smallest."""
from sweep_service.plugins import PrunerPlugin, filter_masks_from_scores


class LInfNorm(PrunerPlugin):
    name = "linf-norm"
    description = "Example package: removes the output filters with the smallest L-infinity norm"

    def masks(self, model, rate, layers, data):
        scores = {n: model.get_submodule(n).weight.detach().flatten(1).abs().amax(1) for n in layers}
        return filter_masks_from_scores(model, layers, scores, rate)
