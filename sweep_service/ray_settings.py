"""Ray's system settings for the clusters the service starts: the coordinator's local
cluster and the Docker head (`docker/entrypoint.sh` passes the JSON that
`python -m sweep_service.ray_settings` prints). Other nodes take them from the head.
"""
import json

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
}

if __name__ == "__main__":
    print(json.dumps(SYSTEM_CONFIG))
