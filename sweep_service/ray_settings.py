"""How the coordinator starts or joins Ray, and Ray's system settings for the clusters the
service starts: the coordinator's local cluster and the Docker head (`docker/entrypoint.sh`
passes the JSON that `python -m sweep_service.ray_settings` prints). Other nodes take them
from the head. Imports neither torch nor the coordinator, so that the command can start
Ray before it imports them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable
from unittest import mock

from sweep_service import heap
from sweep_service.plugins import plugins_dir
from sweep_service.startup import imports_outside_gc

SYSTEM_CONFIG = {
    # Worker processes import what trials need as they start, before they take work.
    "preload_python_modules": ["sweep_service.worker_preload"],
    # A trial's result carries its model's bytes (a resnet18 checkpoint: 43 MB). Returned
    # inside the task's reply, they go straight to the coordinator, which saves them and
    # drops them. Through the object store, the worker would write them into shared memory
    # it keeps mapped, counted in its RSS from then on (30-80 MB more per worker over the
    # benchmark sweep), and the coordinator would read them back out of it. Larger results
    # still go through the object store; the baselines' checkpoints, which every pruned
    # trial of a model reads, are put there by the coordinator.
    "max_direct_call_object_size": 64 * 2**20,
    "task_rpc_inlined_bytes_limit": 64 * 2**20,
    # Fewer wake-ups of Ray's own threads while trials compute. With one trial per core,
    # each wake-up takes a core from a trial: two Ray tasks trained 5-6 % slower than the
    # same arithmetic in a plain process pool, their threads preempted 100-300 times a
    # second against under 70. Off: per-task event records and metrics, which feed only
    # Ray's dashboard and Prometheus (the service's own progress is its log and database).
    # Slowed from every 100 ms: the raylet's resource reports and memory-pressure check
    # (trials last minutes).
    "task_events_report_interval_ms": 0,
    "ray_events_report_interval_ms": 0,
    "enable_metrics_collection": False,
    "event_stats": False,
    "raylet_report_resources_period_milliseconds": 1000,
    "raylet_check_gc_period_milliseconds": 1000,
}

# For the coordinator's local cluster, two waits in Ray's start that held up the sweep's
# first trials (in a 4-trial sweep, with the imports outside the garbage collector too,
# their arithmetic began 6.3-6.6 s after the command's start instead of 7.6-8.8 s):
# - the worker processes start, and import what trials need, as the raylet comes up,
#   instead of once the coordinator has connected (1-2 s later: the raylet's agents and
#   the coordinator's registration come in between);
# - the raylet connects to its object store, which it starts on a thread of its own, as
#   soon as the store listens. In about half of the starts the first attempt came too
#   early, and the next one came a second later (Ray's default retry interval; the raylet
#   logged 1.001 s from the store's mmap to its object manager's start, instead of 2 ms).
#   Retried every 50 ms, 200 times, it still gives up after 10 s, as by default.
LOCAL_SYSTEM_CONFIG = {**SYSTEM_CONFIG, "enable_worker_prestart": True,
                       "raylet_client_connect_timeout_milliseconds": 50,
                       "raylet_client_num_connect_attempts": 200}

# For the coordinator's local cluster, which has no dashboard: its agent's node-stats
# reporter (every 5 s) has nobody to report to.
LOCAL_CLUSTER_ENV = {"REPORTER_UPDATE_INTERVAL_MS": "600000"}


def start_ray(on_launch: Callable[[], None] | None = None):
    """Join the Ray cluster at RAY_ADDRESS, else start a local one with every CPU of this
    machine; returns the `ray` module. `on_launch` is called once the local cluster's
    processes are launched, while Ray waits for them to come up (at once when joining)."""
    with imports_outside_gc():
        import ray

    options = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    # Workers import this package from the same installation as the coordinator, and
    # find plugins in the same folder (mounted into every container in Docker).
    env = {"SWEEP_PLUGINS_DIR": str(plugins_dir()), "PYTHONWARNINGS": "ignore"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if on_launch is not None:
            on_launch()
        ray.init(address=address, runtime_env={"env_vars": env}, **options)
    else:
        # A local cluster's workers inherit this environment; a runtime_env would cost
        # about a second more before the first trial starts. (Docker's workers get their
        # allocator from docker/entrypoint.sh.)
        os.environ.update(env, **LOCAL_CLUSTER_ENV, **heap.allocator_env())
        from ray._private import node

        with mock.patch.object(node, "Node", _local_head_node_class(node.Node, on_launch)):
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG,
                     **options)
    return ray


def _local_head_node_class(Node: type, on_launch: Callable[[], None] | None) -> type:
    """Ray's head node, for the coordinator's local cluster, without three of its Python
    daemons, which such a cluster does not use:
    - the dashboard head: `include_dashboard=False` still starts it (for usage statistics),
      and `ray.init` waits for it before it starts the raylet;
    - the autoscaler's monitor: a local cluster has a fixed size. It also held up every
      shutdown by a second (stopped after the GCS, it tried to report its end to it);
    - the log monitor, which forwards the workers' output to the driver (`log_to_driver` is
      off: it stays in the session's log files).
    It calls `on_launch` once it has launched the raylet (which launches its agents and
    the worker processes).
    Three starts each, alternating with `ray.init`'s default, here: two tasks began 0.9 s
    sooner (3.4-3.8 s after the process's start instead of 4.4-4.7 s), and `ray.shutdown`
    took 0.1-0.2 s instead of 1.1-1.2 s. `ray.init` still starts, connects to and stops
    the node: it looks up `ray._private.node.Node` at each call, which `start_ray` points
    here while it runs. These are Ray's private names, and Ray is pinned: an upgrade must
    check that they still mean this (tests/test_sweep.py does)."""

    class LocalHeadNode(Node):
        def __init__(self, ray_params, *args, **kwargs):
            ray_params.no_monitor = True
            ray_params.include_log_monitor = False
            super().__init__(ray_params, *args, **kwargs)

        def start_api_server(self, **kwargs) -> None:  # the dashboard head
            pass

        def start_ray_processes(self) -> None:
            super().start_ray_processes()
            if on_launch is not None:
                on_launch()

    return LocalHeadNode


if __name__ == "__main__":
    print(json.dumps(SYSTEM_CONFIG))
