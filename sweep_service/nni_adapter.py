"""Adapter from NNI's one-shot pruners to the plugin contract.

A plugin module declares e.g. ``class L1Norm(NNIPruner): name = "l1norm";
nni_pruner = "L1NormPruner"``; this class turns the rate and the layer selection into
NNI's config list, runs the pruner, and hands back its masks with the model unwrapped.

Pruners that learn from data (NNI's ``evaluator`` + ``training_steps`` pruners, such as
``TaylorPruner``) set ``needs_data = True``: the adapter builds an NNI ``TorchEvaluator``
that steps once through each calibration batch with a zero learning rate, so the pruner
sees the gradients while the weights stay as they are.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sweep_service.plugins import Batches, Masks, PrunerPlugin
from sweep_service.quiet import quiet_nni


class NNIPruner(PrunerPlugin):
    """Base for plugins backed by a class of ``nni.compression.pruning``."""

    nni_pruner: ClassVar[str]
    # Extra keys for NNI's config list entry (e.g. {"granularity": ...}).
    nni_config: ClassVar[dict[str, Any]] = {}
    # Extra keyword arguments of the NNI pruner's constructor.
    nni_kwargs: ClassVar[dict[str, Any]] = {}

    def masks(self, model: nn.Module, rate: float, layers: list[str], data: Batches | None) -> Masks:
        with quiet_nni():
            pruner_cls = pruner_class(self.nni_pruner)
            config_list = [{"op_names": list(layers), "sparse_ratio": rate, **self.nni_config}]
            kwargs = dict(self.nni_kwargs)
            if self.needs_data:
                batches = list(data or [])
                if not batches:
                    raise ValueError(f"{self.name} needs calibration batches, got none")
                kwargs.update(evaluator=calibration_evaluator(model, batches), training_steps=len(batches))
            pruner = pruner_cls(model, config_list, **kwargs)
            _, masks = pruner.compress()
            pruner.unwrap_model()
        return {
            module: {param: mask.detach().clone() for param, mask in by_param.items() if mask is not None}
            for module, by_param in masks.items()
        }


def pruner_class(name: str) -> type:
    """The class of ``nni.compression.pruning`` called `name`."""
    import nni.compression.pruning as nni_pruning

    return getattr(nni_pruning, name)


def calibration_evaluator(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """An NNI TorchEvaluator whose "training" is one cross-entropy step per calibration
    batch with a zero learning rate: gradients flow, the weights do not change."""
    import nni
    from nni.compression import TorchEvaluator

    def training_step(batch, model):
        inputs, labels = batch
        return nn.functional.cross_entropy(model(inputs), labels)

    def training_func(model, optimizer, training_step, lr_schedulers=None, max_steps=None,
                      max_epochs=None, *args, **kwargs):
        total = max_steps or len(batches) * (max_epochs or 1)
        for step in range(total):
            optimizer.zero_grad()
            training_step(batches[step % len(batches)], model).backward()
            optimizer.step()  # NNI hooks its mask generation on the optimizer step

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=batches[0][0][:1])
