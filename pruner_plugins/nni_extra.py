"""Further NNI 3.0 pruners, exposed through the generic adapter (`NNIPruner`).

To expose another NNI pruner, add a subclass here naming its class in
``nni.compression.pruning`` (``nni_pruner``), any extra config-list keys (``nni_config``)
or constructor arguments (``nni_kwargs``), and ``needs_data = True`` if it takes an NNI
evaluator and ``training_steps`` (the adapter builds them from the calibration batches).
Then run ``python -m sweep_service plugins check NAME``.

Exposed: ``TaylorPruner`` (below). The criteria of ``L1NormPruner``, ``L2NormPruner`` and
``FPGMPruner`` are computed in ``nni_norm.py`` (as scores, tested equal to NNI's masks).

Tried with NNI 3.0 and not exposed, and why:
- ``LevelPruner`` (unstructured, per weight): its masks fit and honour the rate, but no
  whole filter is masked, so ModelSpeedup removes nothing *and leaves the masked weights
  as they were* (checked: 0% zeros after speedup). A trial would measure the unpruned
  model under a pruned label. It needs the service to apply the masks and keep them
  through fine-tuning first (``plugins check`` fails such plugins at "structure").
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
