"""Tutorial plugin: first-order Taylor importance of each filter's output.

Molchanov et al. (ICLR 2017): removing a feature map changes the loss by about
|activation x gradient|. Add that up per output filter over the calibration batches;
the service removes the filters whose loss would change least.
"""
from torch import nn

from sweep_service.plugins import ScoringPlugin


class TaylorActivation(ScoringPlugin):
    name = "taylor"
    description = "First-order Taylor: removes the filters of least |activation x gradient| on calibration data"
    needs_data = True

    def scores(self, model, layers, data):
        scores = {}

        def remember(name):
            def on_forward(module, inputs, output):
                def on_backward(grad):  # per sample and filter: |sum over positions|
                    taylor = (output * grad).reshape(*output.shape[:2], -1).sum(2).abs()
                    scores[name] = scores.get(name, 0) + taylor.sum(0).detach()
                output.register_hook(on_backward)
            return on_forward

        hooks = [model.get_submodule(name).register_forward_hook(remember(name)) for name in layers]
        for inputs, labels in data:
            model.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
        for hook in hooks:
            hook.remove()
        return scores
