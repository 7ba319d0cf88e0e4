import torch

from sweep_service.plugins import PrunerPlugin


class IgnoresRate(PrunerPlugin):
    name = "ignores-rate"
    description = "Test fixture: always removes the first half of the filters of the first layer"

    def masks(self, model, rate, layers, data):
        mask = torch.ones_like(model.get_submodule(layers[0]).weight)
        mask[: mask.shape[0] // 2] = 0
        return {layers[0]: {"weight": mask}}
