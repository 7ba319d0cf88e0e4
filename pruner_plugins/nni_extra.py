"""Further NNI 3.0 pruners, exposed through the generic adapter (`NNIPruner`).

To expose another NNI pruner, add a subclass here naming its class in
``nni.compression.pruning`` (``nni_pruner``), any extra config-list keys (``nni_config``)
or constructor arguments (``nni_kwargs``), and ``needs_data = True`` if it takes an NNI
evaluator and ``training_steps`` (the adapter builds them from the calibration batches).
Then run ``python -m sweep_service plugins check NAME``.

Exposed: ``TaylorPruner`` and ``LevelPruner`` (below). The criteria of ``L1NormPruner``,
``L2NormPruner`` and ``FPGMPruner`` are computed in ``nni_norm.py`` (as scores, tested
equal to NNI's masks).

``LevelPruner`` masks single weights (unstructured), which ModelSpeedup neither removes
nor zeroes; declared ``structure = "unstructured"``, its masks are applied and kept
through fine-tuning instead (sweep_service.worker.unstructured), as in the unstructured
pruning studies.

Tried with NNI 3.0 and not exposed, and why:
- ``SlimPruner`` ranks channels by scaling factors learned with an L1 sparsity penalty over
  epochs of training; after a few calibration steps the factors have barely moved from
  their common start, so its masks would be close to arbitrary.
- ``LinearPruner``, ``AGPPruner`` (scheduled, iterative) and ``MovementPruner`` (made for
  transformer fine-tuning) prune gradually during a long training run; the service
  prunes once and then fine-tunes, where they reduce to the one-shot pruner they wrap.
- A global ranking across layers (config key ``global_group_id`` with L1NormPruner) can
  empty a layer of resnet18, which speedup refuses (``EmptyLayerError``). The service's
  ``allocation: global`` ranks scoring plugins' channels across groups instead, keeping
  at least one channel in each.
"""
from sweep_service.nni_adapter import NNIPruner


class Taylor(NNIPruner):
    name = "nni-taylor"
    description = "NNI TaylorPruner: removes the filters with the smallest (weight x gradient)^2 on calibration data"
    nni_pruner = "TaylorPruner"
    needs_data = True


class Level(NNIPruner):
    name = "level"
    description = ("NNI LevelPruner: zeroes the smallest-magnitude weights of each layer "
                   "(unstructured: weights zeroed, nothing removed)")
    nni_pruner = "LevelPruner"
    structure = "unstructured"
