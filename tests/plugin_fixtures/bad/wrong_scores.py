import torch

from sweep_service.plugins import ScoringPlugin


class WrongScores(ScoringPlugin):
    name = "wrong-scores"
    description = "Test fixture: half as many scores as the first layer has output filters"

    def scores(self, model, layers, data):
        scores = {name: torch.ones(model.get_submodule(name).weight.shape[0]) for name in layers}
        scores[layers[0]] = scores[layers[0]][::2]
        return scores
