"""How the coordinator starts or joins Ray, and what every trial process gets from it.

Only Ray's public API is used: `ray.init` with a runtime environment that gives the
worker processes the plugins folder, quiet warnings, the allocator that training runs
fastest on (sweep_service.worker.heap), and a setup hook that imports what trials need as the
process starts rather than in its first trial.
"""
from __future__ import annotations

import logging
import os

from sweep_service.coordinator.scheduler import node_slots
from sweep_service.plugins import plugins_dir
from sweep_service.worker import heap
from sweep_service.worker.setup import NO_TRIALS_ENV

# Run by Ray in each worker process as it starts (runtime_env's worker_process_setup_hook).
WORKER_SETUP_HOOK = "sweep_service.worker.setup.prepare_process"
# The runtime environment of an actor that runs no trial (Ray merges its env_vars into the
# job's): the setup hook then leaves out torch, torchvision and NNI.
NO_TRIAL_RUNTIME_ENV = {"env_vars": {NO_TRIALS_ENV: "1"}}


def worker_runtime_env() -> dict:
    """The runtime environment of the sweep's Ray job: its worker processes import this
    package from the same installation as the coordinator and find the plugins in the same
    folder (mounted into every container in Docker)."""
    env = {"SWEEP_PLUGINS_DIR": str(plugins_dir()), "PYTHONWARNINGS": "ignore", **heap.allocator_env()}
    return {"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK}


def joined_cluster() -> bool:
    """Whether the sweep joins a cluster (RAY_ADDRESS), which may grow, rather than start
    one on this machine, which cannot."""
    return bool(os.environ.get("RAY_ADDRESS"))


def start_ray():
    """Join the Ray cluster at RAY_ADDRESS, else start a local one with every CPU of this
    machine; returns the `ray` module."""
    import ray

    options = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env=worker_runtime_env())
    if joined_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], **options)
    else:  # "local": a new cluster of this machine, even if another was started here with `ray start`
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **options)
    return ray


def live_nodes(ray) -> list[dict]:
    """The cluster's live nodes (`ray.nodes()` entries)."""
    return [node for node in ray.nodes() if node.get("Alive")]


def cluster_slots(ray, cpus: float, gpus: float) -> int:
    """Trials that fit on the cluster's live nodes at once, counted node by node."""
    return sum(node_slots(node.get("Resources", {}), cpus, gpus) for node in live_nodes(ray))


def describe_nodes(nodes: list[dict]) -> str:
    """'192.0.2.7: 1 CPU, 0 GPU; ...' for messages about what the cluster offers."""
    return "; ".join(f"{node.get('NodeManagerAddress', '?')}: {node['Resources'].get('CPU', 0):g} CPU, "
                     f"{node['Resources'].get('GPU', 0):g} GPU" for node in nodes) or "no live node"
