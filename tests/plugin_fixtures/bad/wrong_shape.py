import torch

from sweep_service.plugins import PrunerPlugin


class WrongShape(PrunerPlugin):
    name = "wrong-shape"
    description = "Test fixture: one mask per output filter instead of one per weight"

    def masks(self, model, rate, layers, data):
        weight = model.get_submodule(layers[0]).weight
        return {layers[0]: {"weight": torch.ones(weight.shape[0])}}
