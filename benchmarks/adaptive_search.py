"""The adaptive search against the full grid, in one run: the same synthetic grid (three
models x three pruners x eight rates, tiny data, offline) swept twice on a local Ray
cluster, once with `search: grid` and once with `search: adaptive`, each into its own
database. Prints both Pareto fronts (accuracy against parameters) and the fine-tuning
epochs each sweep spent, and checks that the adaptive front has the grid's members, or
accuracies within the measured noise, for at most half the fine-tuning.

The floor is what a user shipping a compressed model would set: lose at most 2 points of
accuracy against the model's own baseline (`max_drop: 0.02`; pruning papers call a
1-2 point loss acceptable). Trials under their floor are what the user ruled out, so the
fronts are compared above it (the grid's whole front is printed too). The baselines train
to convergence (24 epochs), as the reference study's pretrained and fine-tuned ones are:
pruning then costs accuracy the fine-tune cannot fully win back, and accuracy falls with
the rate as in its figures. (Under-trained baselines are beaten by their own pruned
trials, which train two epochs more, and every curve is flat to the noise.) Accuracies
are measured on all 2000 synthetic test images. With `compute: fp32` both sweeps train
bit-identically, and a trial resumed from its rung checkpoint ends as if uninterrupted, so
every trial the adaptive sweep trained in full must have exactly the grid's accuracy:
checked as well.

    python benchmarks/adaptive_search.py [--workdir DIR] [--rates 0.1 0.2 ...]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from sweep_service.coordinator.config import parse_config
from sweep_service.coordinator.search import NOISE_Z
from sweep_service.coordinator.sweep import run_sweep
from sweep_service.dataset_info import test_set_size
from sweep_service.report.results import SweepResults, load_results, pareto_front
from sweep_service.spec import BASELINE, PRUNED, SKIPPED

MAX_DROP = 0.02
GRID = dict(
    models=["resnet18", "mobilenet_v2", "googlenet"], pruners=["l1norm", "l2norm", "fpgm"],
    rates=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], dataset="synthetic", weights="none", image_size=32,
    baseline_epochs=24, finetune_epochs=2, batch_size=64, train_subset=1024, test_subset=None,
    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, compute="fp32",
    seed=0, measure={"warmup": 1, "rounds": 1, "runs": 1},  # latency is not what this compares
)
ADAPTIVE = {"max_drop": MAX_DROP, "rungs": [0.25], "front": "params"}


def sweep(name: str, workdir: Path, extra: dict) -> tuple[SweepResults, float]:
    config = parse_config({**GRID, **extra, "name": name, "data_root": str(workdir / "data"),
                           "database": str(workdir / f"{name}.db"), "output_dir": str(workdir / name)})
    started = time.time()
    summary = run_sweep(config, progress=False)
    if not summary.ok:
        raise SystemExit(f"the {name} sweep left trials unfinished: {summary.counts}")
    return load_results(config.database, summary.sweep_id), time.time() - started


def finetune_epochs(results: SweepResults) -> float:
    """Epochs of pruned fine-tuning spent: each trial's epochs times the share it trained."""
    return sum(t["epochs"] * (t["budget"] if t["budget"] is not None else 1.0)
               for t in _pruned(results) if t["status"] != SKIPPED)


def _pruned(results: SweepResults) -> list[dict]:
    return [{**t, "epochs": json.loads(t["spec_json"])["epochs"]} for t in results.trials if t["kind"] == PRUNED]


def full_results(results: SweepResults) -> list[dict]:
    """Baselines and the pruned trials trained in full (short-budget ones are not comparable)."""
    return [t for t in results.completed if (t["budget"] or 1.0) >= 1.0]


def above_floor(trials: list[dict], results: SweepResults) -> list[dict]:
    floors = {m: results.baseline(m).estimate("accuracy").mean - MAX_DROP for m in results.models}
    return [t for t in trials if t["accuracy"] >= floors[t["model"]]]


def noise(a: float, b: float, n: int) -> float:
    """NOISE_Z standard errors of the difference of two accuracies on `n` test images."""
    return NOISE_Z * math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


def label(t: dict) -> str:
    return f"{t['model']} baseline" if t["kind"] == BASELINE else f"{t['model']} {t['pruner']} {t['rate']:.0%}"


def compare(grid: SweepResults, adaptive: SweepResults) -> dict:
    n = test_set_size(GRID["dataset"], GRID["test_subset"])
    grid_front = pareto_front(above_floor(full_results(grid), grid), "params_after")
    adaptive_front = pareto_front(above_floor(full_results(adaptive), adaptive), "params_after")
    in_adaptive = {label(t) for t in adaptive_front}
    members = []
    for t in grid_front:
        cheaper = [a for a in adaptive_front if a["params_after"] <= t["params_after"]]
        best = max(cheaper, key=lambda a: a["accuracy"]) if cheaper else None
        gap = t["accuracy"] - best["accuracy"] if best else math.inf
        margin = noise(t["accuracy"], best["accuracy"], n) if best else 0.0
        members.append(dict(label=label(t), params=t["params_after"], accuracy=t["accuracy"],
                            in_adaptive=label(t) in in_adaptive, best=label(best) if best else None,
                            gap=gap, noise=margin, ok=label(t) in in_adaptive or gap <= margin))
    extra = [label(a) for a in adaptive_front if label(a) not in {m["label"] for m in members}]
    same = {label(t): t["accuracy"] for t in full_results(grid)}
    identical = [label(t) for t in full_results(adaptive) if same.get(label(t)) == t["accuracy"]]
    differing = [label(t) for t in full_results(adaptive) if label(t) in same and same[label(t)] != t["accuracy"]]
    return dict(members=members, extra=extra, identical=len(identical), differing=differing,
                full_grid_front=[label(t) for t in pareto_front(full_results(grid), "params_after")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where the data, databases and models go (default: a temp dir)")
    parser.add_argument("--rates", type=float, nargs="+", help="other rates (a quicker trial of the script)")
    args = parser.parse_args()
    if args.rates:
        GRID["rates"] = args.rates
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adaptive-search-"))
    grid, grid_s = sweep("grid", workdir, {"search": "grid"})
    adaptive, adaptive_s = sweep("adaptive", workdir, {"search": "adaptive", "adaptive": ADAPTIVE})
    found = compare(grid, adaptive)
    grid_epochs, adaptive_epochs = finetune_epochs(grid), finetune_epochs(adaptive)
    counts = {s: sum(t["status"] == s for t in _pruned(adaptive)) for s in ("completed", "skipped")}
    stopped = sum(1 for t in _pruned(adaptive) if t["status"] == "completed" and (t["budget"] or 1.0) < 1.0)

    print(f"\ngrid: {len(GRID['models'])} models x {len(GRID['pruners'])} pruners x {len(GRID['rates'])} rates, "
          f"{GRID['train_subset']} training / {test_set_size(GRID['dataset'], GRID['test_subset'])} test images, "
          f"baselines {GRID['baseline_epochs']} epochs, fine-tune {GRID['finetune_epochs']}; adaptive: {ADAPTIVE}")
    print(f"adaptive sweep: {counts['completed'] - stopped} pruned trials in full, {stopped} stopped at their first "
          f"rung, {counts['skipped']} skipped")
    print(f"\nPareto front of accuracy against parameters, above the floor (baseline - {MAX_DROP:.0%}; "
          f"'noise': {NOISE_Z:g} standard errors of the difference):")
    print(f"  {'grid member':<28}{'params':>9}{'acc':>8}  {'in adaptive?':<14}{'adaptive best at <= params':<30}"
          f"{'gap':>7}{'noise':>7}")
    for m in found["members"]:
        print(f"  {m['label']:<28}{m['params'] / 1e6:>8.2f}M{m['accuracy']:>8.1%}  "
              f"{'yes' if m['in_adaptive'] else 'no':<14}{m['best'] or '-':<30}{m['gap']:>+7.1%}{m['noise']:>7.1%}")
    if found["extra"]:
        print(f"  only on the adaptive front: {', '.join(found['extra'])}")
    print(f"  the grid's whole front, below the floor included: {', '.join(found['full_grid_front'])}")
    print(f"\nfine-tuning epochs of the pruned trials: grid {grid_epochs:.1f}, adaptive {adaptive_epochs:.1f} "
          f"({adaptive_epochs / grid_epochs:.0%}); the baselines train {GRID['baseline_epochs']} epochs x "
          f"{len(GRID['models'])} models in each")
    print(f"wall time: grid {grid_s / 60:.1f} min, adaptive {adaptive_s / 60:.1f} min")
    print(f"trials trained in full by both: {found['identical']} with identical accuracy, "
          f"{len(found['differing'])} differing {found['differing'] or ''}")
    checks = [
        ("every grid front member is on the adaptive front or within noise of it",
         all(m["ok"] for m in found["members"])),
        ("adaptive spends at most half the fine-tuning epochs", adaptive_epochs <= grid_epochs / 2),
        ("trials trained in full by both have identical accuracies", not found["differing"]),
    ]
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"databases: {workdir / 'grid.db'}, {workdir / 'adaptive.db'}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
