"""What every Ray worker process of a sweep runs as it starts: the runtime environment's
setup hook (sweep_service.coordinator.cluster).

On a node that trains, it imports what trials need (sweep_service.worker.trial's
`prepare_process`), so that the first trial is not charged for it. A node that only
measures, such as an edge device joined with `--num-cpus 0 --resources '{"edge": 1}'`,
needs neither torch nor NNI (the measuring protocol runs ONNX Runtime alone; NNI has no
ARM64 wheel), so where they are not installed there is nothing to prepare.
"""
from __future__ import annotations

import importlib.util
import os

TRIAL_STACK = ("torch", "torchvision", "nni")
# Set (in its runtime environment's env_vars) for a process that will run no trial, such as
# the coordinator's progress actor: it would import the trial stack for nothing (about 1 GB).
NO_TRIALS_ENV = "SWEEP_NO_TRIALS"


def prepare_process() -> float:
    """Prepare this process for trials if it can run them; returns the seconds it took."""
    if os.environ.get(NO_TRIALS_ENV) or not all(importlib.util.find_spec(name) for name in TRIAL_STACK):
        return 0.0
    from sweep_service.worker.trial import prepare_process as prepare_for_trials

    return prepare_for_trials()
