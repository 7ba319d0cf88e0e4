"""How the coordinator starts or joins Ray, and what every trial process gets from it.

Only Ray's public API is used: `ray.init` with a runtime environment that gives the
worker processes the plugins folder, quiet warnings, the allocator that training runs
fastest on (sweep_service.worker.heap), and a setup hook that imports what trials need as the
process starts rather than in its first trial.
"""
from __future__ import annotations

import logging
import math
import os

from sweep_service.plugins import plugins_dir
from sweep_service.worker import heap

# Run by Ray in each worker process as it starts (runtime_env's worker_process_setup_hook).
WORKER_SETUP_HOOK = "sweep_service.worker.setup.prepare_process"


def worker_runtime_env() -> dict:
    """The runtime environment of the sweep's Ray job: its worker processes import this
    package from the same installation as the coordinator and find the plugins in the same
    folder (mounted into every container in Docker)."""
    env = {"SWEEP_PLUGINS_DIR": str(plugins_dir()), "PYTHONWARNINGS": "ignore", **heap.allocator_env()}
    return {"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK}


def start_ray():
    """Join the Ray cluster at RAY_ADDRESS, else start a local one with every CPU of this
    machine; returns the `ray` module."""
    import ray

    options = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env=worker_runtime_env())
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **options)
    return ray


def node_slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials asking for `cpus` CPUs and `gpus` GPUs fit on one node offering
    `resources` (Ray's resource dict): a trial cannot span nodes."""
    slots = int(resources.get("CPU", 0) // cpus) if cpus > 0 else math.inf
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    return 0 if slots == math.inf else int(slots)


def cluster_slots(ray, cpus: float, gpus: float) -> int:
    """Trials that fit on the cluster's live nodes at once, counted node by node."""
    return sum(node_slots(node.get("Resources", {}), cpus, gpus) for node in ray.nodes() if node.get("Alive"))
