"""Adapter from NNI's one-shot pruners to the plugin contract.

A plugin module declares e.g. ``class L1Norm(NNIPruner): name = "l1norm";
nni_pruner = "L1NormPruner"``; this class turns the rate and the layer selection into
NNI's config list, runs the pruner, and hands back its masks with the model unwrapped.
"""
from __future__ import annotations

from typing import Any, ClassVar

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
            import nni.compression.pruning as nni_pruning

            pruner_cls = getattr(nni_pruning, self.nni_pruner)
            config_list = [{"op_names": list(layers), "sparse_ratio": rate, **self.nni_config}]
            pruner = pruner_cls(model, config_list, **self.nni_kwargs)
            _, masks = pruner.compress()
            pruner.unwrap_model()
        return {
            module: {param: mask.detach().clone() for param, mask in by_param.items() if mask is not None}
            for module, by_param in masks.items()
        }
