"""The measuring protocol: latency and peak memory of exported models, on the node that
measures them.

`MeasuringNode` is the Ray actor the measurement stage places on a node it holds whole
(sweep_service.coordinator.measurement). It is handed the models one file at a time, so
that Ray's object store never holds more than one, keeps them in a temporary folder on its
node, and measures them with `measure_files`: in fresh processes that import only ONNX
Runtime and numpy, as a device serving a model would:

- latency: one process loads every model, runs each `warmup` times, then `rounds` rounds
  in which every model runs `runs` timed calls on a fixed input, the order rotated by one
  each round. The models take turns, so a change in the host's speed (another tenant,
  thermal throttling) touches all of them alike. Per model and batch size: the median,
  p10 and p90 of all timed calls and the median of each round.
- memory: for each model and batch size, a process of its own loads it, runs it a few
  times and reports its peak resident set size (so the figure includes the ~50 MB of the
  Python interpreter, numpy and ONNX Runtime that serving needs anyway).

Run as `python -m sweep_service.worker.latency`, this module is that fresh process: it reads
its job as JSON on stdin and writes the figures as JSON on stdout. Only the standard
library is imported at the top.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Calls of each model before its peak memory is read: the first calls allocate the buffers.
MEMORY_RUNS = 5
# The folder holding the sweep_service package, for the measuring processes' import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def summarize(samples: list[float], round_medians: list[float]) -> dict[str, Any]:
    """Figures of one model at one batch size from its timed calls (seconds) and the median
    of each round (seconds, in round order): median, p10, p90 and the rounds' spread
    ((max - min) / median of the round medians), in milliseconds."""
    ordered = sorted(samples)
    tenths = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else ordered * 9
    middle = statistics.median(round_medians)
    return {
        "latency_ms": statistics.median(ordered) * 1e3,
        "latency_p10_ms": tenths[0] * 1e3,
        "latency_p90_ms": tenths[-1] * 1e3,
        "round_spread": (max(round_medians) - min(round_medians)) / middle if middle > 0 else 0.0,
        "round_medians_ms": [m * 1e3 for m in round_medians],
    }


def time_models(paths: dict[str, str], *, threads: int, batch_sizes: list[int], warmup: int, rounds: int,
                runs: int, image_size: int) -> dict[str, dict[int, dict[str, Any]]]:
    """The latency protocol, in this process: {name: {batch size: summarize(...)}}."""
    import numpy as np

    from sweep_service.worker.runtime import INPUT_NAME, session

    sessions = {name: session(path, threads) for name, path in paths.items()}
    names = list(sessions)
    figures: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
    clock = time.perf_counter
    for batch_size in batch_sizes:
        feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((batch_size, 3, image_size, image_size),
                                                                       dtype=np.float32)}
        samples: dict[str, list[float]] = {name: [] for name in names}
        medians: dict[str, list[float]] = {name: [] for name in names}
        gc.collect()
        gc.disable()  # a collection inside a timed call would be charged to that model
        try:
            for name in names:
                for _ in range(warmup):
                    sessions[name].run(None, feed)
            for round_index in range(rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    run, times = sessions[name].run, []
                    for _ in range(runs):
                        start = clock()
                        run(None, feed)
                        times.append(clock() - start)
                    samples[name] += times
                    medians[name].append(statistics.median(times))
        finally:
            gc.enable()
        for name in names:
            figures[name][batch_size] = summarize(samples[name], medians[name])
    return figures


def peak_memory_mb(path: str, *, threads: int, batch_size: int, image_size: int) -> float:
    """Peak resident memory, in MiB, of this process after loading `path` and running it
    (call it in a fresh process)."""
    import numpy as np

    from sweep_service.worker.runtime import INPUT_NAME, session

    runner = session(path, threads)
    feed = {INPUT_NAME: np.zeros((batch_size, 3, image_size, image_size), dtype=np.float32)}
    for _ in range(MEMORY_RUNS):
        runner.run(None, feed)
    # VmHWM, the peak of this program's own memory: getrusage's ru_maxrss would also count
    # what the parent held when it forked this process, since Linux keeps it across exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def node_identity() -> dict[str, Any]:
    """Which node and CPU this is, for every measurement row."""
    node_id = None
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return {"node_host": socket.gethostname(), "node_id": node_id, "cpu_model": cpu_model(),
            "cpu_arch": platform.machine(), "cpus": usable_cpus(), "load_avg": os.getloadavg()[0]}


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's "model name" (x86, some ARM kernels), else the
    board's model from the device tree (Raspberry Pi, Jetson), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        return platform.processor() or platform.machine()


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's `cpus:` limit), read from cgroup v2 or, on hosts that still run it, v1."""
    count = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = _cpu_quota(cgroup_root)
    return min(count, quota) if quota else count


def _cpu_quota(root: Path) -> float | None:
    """The cgroup's CPU quota in CPUs, or None if it has none."""
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):  # cgroup v1: a quota of -1 means none
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def measure_files(paths: dict[str, str], protocol: dict[str, Any], parallel: int = 1) -> dict[str, Any]:
    """Time the ONNX files `paths` ({name: path}) together with `protocol` (threads,
    batch_sizes, warmup, rounds, runs, image_size), then measure each one's peak memory,
    `parallel` processes at a time. Returns {"node": node_identity(), "models": {name:
    {batch size: figures}}, "seconds": ...}."""
    start = time.perf_counter()
    node = node_identity()
    timed = _run_fresh({"job": "latency", "paths": paths, **protocol}, protocol["threads"])
    figures = {name: {int(batch): values for batch, values in by_batch.items()} for name, by_batch in timed.items()}
    jobs = [(name, batch) for name in paths for batch in protocol["batch_sizes"]]

    def memory(job: tuple[str, int]) -> float:
        name, batch = job
        return _run_fresh({"job": "memory", "path": paths[name], "threads": protocol["threads"],
                           "batch_size": batch, "image_size": protocol["image_size"]}, protocol["threads"])

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for (name, batch), peak in zip(jobs, pool.map(memory, jobs)):
            figures[name][batch]["peak_rss_mb"] = peak
    return {"node": node, "models": figures, "seconds": time.perf_counter() - start}


class MeasuringNode:
    """The measuring node's side of the stage (a Ray actor): `receive` each model file of a
    group, then `measure` them together; `close` removes what is left.

    A stage whose coordinator was killed leaves its folder behind (a killed actor runs no
    clean-up); the next one on the node removes it, so that a device's small disk does not
    fill up with model files. Each folder is named after the process that made it."""

    PREFIX = "sweep-measure-"

    def __init__(self) -> None:
        _remove_abandoned(Path(tempfile.gettempdir()), self.PREFIX)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-"))
        self.paths: dict[str, str] = {}

    def receive(self, name: str, data: bytes) -> None:
        path = self.folder / f"{len(self.paths)}.onnx"
        path.write_bytes(data)
        self.paths[name] = str(path)

    def measure(self, protocol: dict[str, Any], parallel: int = 1) -> dict[str, Any]:
        """measure_files of the files received since the last call, which are then deleted."""
        try:
            return measure_files(self.paths, protocol, parallel)
        finally:
            for path in self.paths.values():
                Path(path).unlink(missing_ok=True)
            self.paths = {}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_abandoned(parent: Path, prefix: str) -> None:
    """Remove the folders `prefix`PID-... in `parent` whose process is gone."""
    for folder in parent.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _run_fresh(job: dict[str, Any], threads: int) -> Any:
    """Run `job` in a fresh `python -m sweep_service.worker.latency` process; its JSON answer."""
    from sweep_service.worker import heap

    # Served as a device would serve it: without the allocator trial processes are given
    # (sweep_service.worker.heap), on the threads asked for.
    trial_allocator = heap.allocator_env({})
    env = {name: value for name, value in os.environ.items() if trial_allocator.get(name) != value}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "sweep_service.worker.latency"], input=json.dumps(job),
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"measuring process failed ({job['job']}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _main() -> None:
    job = json.load(sys.stdin)
    if job["job"] == "latency":
        answer: Any = time_models(job["paths"], threads=job["threads"], batch_sizes=job["batch_sizes"],
                                  warmup=job["warmup"], rounds=job["rounds"], runs=job["runs"],
                                  image_size=job["image_size"])
    else:
        answer = peak_memory_mb(job["path"], threads=job["threads"], batch_size=job["batch_size"],
                                image_size=job["image_size"])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    _main()
