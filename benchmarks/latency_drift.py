"""How far a node's latency figures drift over minutes, model by model, in one run.

Two runs of the measurement stage minutes apart agree only as well as the node's speed
holds between them. This script shows how well it holds: it loads, in one process, each
model unpruned and pruned by L1Norm at 60 % with `round_to: 8`, exported to ONNX fp32, and
times them at batch 1 on one thread for `--seconds`, the models taking turns of `--runs`
calls as in the stage's rounds. The calls are then cut into windows of `--window` seconds,
about as long as one run of the stage, and each model's median is taken per window.

Printed per model: its file size against the node's last-level cache, the range of its
window medians, and the share of pairs of windows (two runs of the stage at random times
in the span) whose medians differ by more than 10 %. Nothing else should run on the node
meanwhile; on a shared virtual machine other tenants still do, and a model whose weights
do not fit in the cache they share shows it.

    python benchmarks/latency_drift.py [--seconds 300] [--window 10] [--models resnet18 mobilenet_v2]

The weights are random (no data is needed). Figures from this machine are in docs/edge.md.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from channel_rounding import IMAGE_SIZE, pruned  # noqa: E402

from model_zoo import create_model  # noqa: E402
from sweep_service.quiet import silence_libraries  # noqa: E402
from sweep_service.worker.variants import export_onnx  # noqa: E402

RATE = 0.6
APART = 0.10  # the bound for two measurements of the same model


def last_level_cache() -> str:
    """The largest CPU cache's size as the kernel gives it (e.g. "32768K"), or "unknown"."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"),
                    key=lambda index: int((index / "level").read_text()))
    return (caches[-1] / "size").read_text().strip() if caches else "unknown"


def time_in_turns(paths: dict[str, str], seconds: float, runs: int) -> dict[str, list[tuple[float, float]]]:
    """(start, duration) of every timed call of each model, the models taking turns of
    `runs` calls on one thread for `seconds`."""
    import numpy as np

    from sweep_service.worker.runtime import INPUT_NAME, session

    sessions = {name: session(path, 1) for name, path in paths.items()}
    feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)}
    for runner in sessions.values():
        for _ in range(10):
            runner.run(None, feed)
    calls: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    clock, begin = time.perf_counter, time.perf_counter()
    while clock() - begin < seconds:
        for name, runner in sessions.items():
            for _ in range(runs):
                start = clock()
                runner.run(None, feed)
                calls[name].append((start - begin, clock() - start))
    return calls


def window_medians(calls: list[tuple[float, float]], window: float) -> list[float]:
    """The median duration (ms) of the calls in each whole window of `window` seconds."""
    by_window: dict[int, list[float]] = {}
    for start, duration in calls:
        by_window.setdefault(int(start // window), []).append(duration)
    last = max(by_window)  # cut short by the end of the span
    return [statistics.median(durations) * 1e3 for index, durations in sorted(by_window.items()) if index < last]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=20, help="calls per model in each turn (the stage's `runs`)")
    args = parser.parse_args()
    if args.seconds < 3 * args.window:
        sys.exit(f"--seconds {args.seconds:g} holds fewer than 3 windows of {args.window:g} s: make it longer")
    silence_libraries()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="latency-drift-") as folder:
        paths, sizes = {}, {}
        for name in args.models:
            model = create_model(name, weights="none").eval()
            small = pruned(model, name, RATE, 8)[0]
            for label, variant in ((f"{name} unpruned", model), (f"{name} {RATE:.0%} round_to 8", small)):
                paths[label] = str(Path(folder) / f"{len(paths)}.onnx")
                Path(paths[label]).write_bytes(export_onnx(variant, IMAGE_SIZE))
                sizes[label] = Path(paths[label]).stat().st_size / 2**20
        print(f"timing {len(paths)} models in turns for {args.seconds:g} s (batch 1, 1 thread) ...", flush=True)
        calls = time_in_turns(paths, args.seconds, args.runs)

    print(f"\nlast-level cache: {last_level_cache()}; windows of {args.window:g} s")
    print(f"{'model':28} {'file MB':>7}  {'median ms':>9}  {'windows min-max ms':>18} {'range':>6}  "
          f"{'pairs > 10 %':>12}")
    for label, timed in calls.items():
        medians = window_medians(timed, args.window)
        pairs = list(itertools.combinations(medians, 2))
        apart = sum(abs(b / a - 1) > APART for a, b in pairs) / len(pairs)
        overall = statistics.median(d for _, d in timed) * 1e3
        print(f"{label:28} {sizes[label]:7.1f}  {overall:9.3f}  {min(medians):8.3f}-{max(medians):<9.3f} "
              f"{max(medians) / min(medians) - 1:6.1%}  {apart:12.1%}")
    print("\n'pairs > 10 %': the share of pairs of windows whose medians differ by more than 10 %, as two runs "
          "of the measurement stage at those times would.")


if __name__ == "__main__":
    main()
