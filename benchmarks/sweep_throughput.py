"""Sweep throughput, measured side by side in one run on this machine.

1. The service runs the benchmark grid (`python -m sweep_service run`, local Ray) as a
   user would: `compute: auto` (each model's training format probed once), every trial
   exporting its ONNX fp32 variant, and the measurement stage after the trials. The stage's
   share of the service's wall time is read from the sweep's `measurement_runs` row.
2. The ideal: each trial's fine-tune and evaluation arithmetic alone (its final model,
   random tensors already in memory, same batch sizes, step counts and threads per
   trial), packed onto the same number of parallel slots. Efficiency = ideal / wall.
   The host's speed drifts by tens of percent over minutes, so the service and the ideal
   are run in rounds of service, ideal, ideal, service (two rounds by default): a steady
   drift then weighs on both sums alike, and each added round narrows the noise of the
   rest. Each pair is reported as well as the sums.
3. The plain reference: the same grid as a sequential script a user of NNI would write
   (benchmarks/plain_reference.py: DataLoader + PIL transforms, one trial at a time).
   Its accuracies are compared with the service's, trial by trial, against the noise of
   the random draws, measured by fine-tuning one pruned model per architecture with a few
   replicate seeds in both pipelines (benchmarks/seed_noise.py).
4. FLOPs per image of each model and the achieved GFLOP/s next to a measured fp32
   matmul peak, for information.
5. A table on stdout and every figure as JSON (default: artifacts/benchmark.json).

    python benchmarks/sweep_throughput.py [--quick] [--rounds N] [--out FILE] [--workdir DIR]

`--quick` runs a small grid (one model, one rate) in one round to check that the whole
benchmark works; its figures are not comparable with the full grid's targets.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import yaml
from seed_noise import QUICK_SEEDS, SEEDS, measure_seed_noise

REPO = Path(__file__).resolve().parents[1]
SLOTS = os.cpu_count() or 2
FULL_GRID = dict(
    name="benchmark", models=["resnet18", "mobilenet_v2"], pruners=["l1norm", "l2norm", "fpgm"],
    rates=[0.3, 0.5, 0.7], dataset="synthetic", weights="none", image_size=32,
    baseline_epochs=1, finetune_epochs=1, batch_size=128, eval_batch_size=500,
    train_subset=10_000, test_subset=2_000, seed=0,
    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    resources={"cpus": 1, "gpus": 0}, compute="auto",
    # NNI's per-layer masks, as plain_reference.py forms them, so that each accuracy pair
    # prunes the same channels (the default, dependency, prunes coupled layers together).
    grouping="layer",
)
# One model and one rate (the seed-noise measurement's, benchmarks/seed_noise.py) on fewer images.
QUICK_GRID = {**FULL_GRID, "name": "benchmark-quick", "models": ["resnet18"], "rates": [0.5],
              "train_subset": 1_000, "test_subset": 500}
GRID = FULL_GRID  # the grid of this run (main sets it)
PHASES = ("startup", "build", "group", "prune", "speedup", "data", "finetune", "eval", "measure", "export", "wait")
# Targets of the full grid (issues 27 and 29).
MIN_SPEEDUP, MIN_EFFICIENCY, MAX_OVERHEAD, MAX_RSS_GROWTH, MAX_MEASUREMENT_SHARE = 1.3, 0.85, 0.10, 0.10, 0.05


def run_service(workdir: Path, name: str) -> dict:
    config = {**GRID, "data_root": str(workdir / "data"), "database": str(workdir / f"{name}.db"),
              "output_dir": str(workdir / name)}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    # A kept workdir must not turn the measurement into a resume of the last run.
    shutil.rmtree(config["output_dir"], ignore_errors=True)
    for stale in workdir.glob(f"{name}.db*"):
        stale.unlink()
    started, start = time.time(), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sweep_service", "run", str(path)], cwd=REPO,
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"service run failed:\n{result.stdout}\n{result.stderr}")
    con = sqlite3.connect(config["database"])
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM trials ORDER BY finished_at")]
    stages = [dict(r) for r in con.execute("SELECT * FROM measurement_runs")]
    con.close()
    if any(r["status"] != "completed" for r in rows):
        sys.exit(f"service trials failed: {[r['error'] for r in rows if r['status'] != 'completed']}")
    if len(stages) != 1 or stages[0]["status"] != "finished":
        sys.exit(f"expected one finished run of the measurement stage, the sweep recorded {stages}")
    return {"wall_s": wall, "rows": rows, "timeline": _timeline(rows, started, started + wall),
            "measurement_s": stages[0]["seconds"], "measured_variants": stages[0]["variants"]}


def _timeline(rows: list[dict], started: float, ended: float) -> dict:
    """Where the service's wall time went: before the first trial was dispatched, the trials
    (with the share of slot time no trial ran), after the last result."""
    def clock(text: str) -> float:  # the store's UTC timestamps
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()

    first = min(clock(r["started_at"]) for r in rows)
    last = max(clock(r["finished_at"]) for r in rows)
    busy = sum(r["time_total_s"] for r in rows)
    return {"before_first_trial_s": first - started, "trials_s": last - first,
            "slots_idle_fraction": 1 - busy / (SLOTS * (last - first)), "after_last_trial_s": ended - last}


# --- the ideal ---------------------------------------------------------------------------

def _batch_sizes(n: int, batch: int) -> list[int]:
    return [batch] * (n // batch) + ([n % batch] if n % batch else [])


def _ideal_job(job: dict) -> dict:
    """Time the bare arithmetic of one trial: its model, in-memory random tensors."""
    import torch

    from sweep_service.worker import heap
    from sweep_service.worker.compute import Compute
    from sweep_service.worker.training import make_optimizer

    torch.set_num_threads(job["threads"])
    heap.keep_freed_memory()  # as a worker does
    if job["artifact"].endswith(".pt") and job["kind"] == "pruned":
        model = torch.load(job["artifact"], weights_only=False)
    else:
        from model_zoo import create_model

        model = create_model(job["model"], weights="none")
    # The format the trial trained in: the framework's best speed for that model, as measured.
    compute, cpu = Compute.parse(job["compute"]), torch.device("cpu")
    compute.prepare(model)
    optimizer = make_optimizer(model, job["optimizer"])
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs = {b: compute.inputs(torch.randn(b, 3, 32, 32), cpu)
              for b in set(job["train_batches"] + job["eval_batches"])}
    labels = {b: torch.randint(0, 10, (b,)) for b in inputs}
    start = time.perf_counter()
    model.train()
    for b in job["train_batches"]:
        with compute.autocast(cpu):
            loss = loss_fn(model(inputs[b]), labels[b])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():  # evaluation in fp32, as in the service
        for _ in range(job["evaluations"]):
            for b in job["eval_batches"]:
                model(inputs[b]).argmax(1)
    seconds = time.perf_counter() - start
    model = optimizer = inputs = None
    heap.release()  # as a worker does after each trial
    return {"key": job["key"], "seconds": seconds, "allocator": heap.allocator()}


@contextmanager
def _environment(extra: dict[str, str]):
    """os.environ with `extra` set, restored afterwards: what processes started inside see."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure_ideal(rows: list[dict]) -> dict:
    from sweep_service.worker import heap

    jobs = []
    for row in rows:
        baseline = row["kind"] == "baseline"
        epochs = GRID["baseline_epochs"] if baseline else GRID["finetune_epochs"]
        jobs.append(dict(key=row["key"], kind=row["kind"], model=row["model"], artifact=row["artifact_path"],
                         threads=int(row["threads"] or 1), compute=row["compute"], optimizer=GRID["optimizer"],
                         train_batches=_batch_sizes(GRID["train_subset"], GRID["batch_size"]) * epochs,
                         eval_batches=_batch_sizes(GRID["test_subset"], GRID["eval_batch_size"]),
                         # A pruned trial evaluates right after speedup and after fine-tuning.
                         evaluations=1 if baseline else 2))
    # Measured while `SLOTS` run at once, as in the sweep, so both see the same contention,
    # and on the allocator the service's workers get (sweep_service.worker.heap). The pool's
    # processes start with the environment they are created in: the preload must be there.
    with _environment(heap.allocator_env()), mp.get_context("spawn").Pool(SLOTS) as pool:
        results = list(pool.imap_unordered(_ideal_job, jobs))
    durations = {r["key"]: r["seconds"] for r in results}
    slots = [0.0] * SLOTS  # longest-first packing onto the slots
    for seconds in sorted(durations.values(), reverse=True):
        heapq.heapreplace(slots, slots[0] + seconds)
    return {"wall_s": max(slots), "per_trial_s": durations, "allocators": sorted({r["allocator"] for r in results})}


# --- the plain reference -----------------------------------------------------------------

def run_reference(workdir: Path, service_rows: list[dict]) -> dict:
    """The reference trains and times its own baselines; its pruned trials start from the
    service's baseline weights, so that each accuracy pair shares its starting point."""
    grid_file = workdir / "grid.json"
    data_root = workdir / "data" / "synthetic-cifar10"
    start_from = {r["model"]: r["artifact_path"] for r in service_rows if r["kind"] == "baseline"}
    grid_file.write_text(json.dumps({**GRID, "data_root": str(data_root), "start_from": start_from}))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plain_reference.py"), str(grid_file)],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"plain reference failed:\n{result.stderr[-3000:]}")
    trials = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {"wall_s": wall, "trials": trials}


# --- arithmetic figures ------------------------------------------------------------------

def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def _rss_growth(rows: list[dict]) -> dict:
    """Per worker: RSS after its 3rd and last trial, and the part of it that is pages of Ray's
    object store (shared by every worker that touched them; Ray's memory guide subtracts
    them to get a worker's own memory)."""
    by_worker: dict[int, list[dict]] = {}
    for row in rows:  # rows are in finishing order
        by_worker.setdefault(row["worker_pid"], []).append(row)
    growth = {}
    for pid, trials in by_worker.items():
        if len(trials) < 4:
            continue
        third, last = trials[2], trials[-1]
        own = [t["worker_rss_mb"] - (t["worker_shared_mb"] or 0.0) for t in (third, last)]
        growth[str(pid)] = {"trials": len(trials), "rss_after_3rd_mb": third["worker_rss_mb"],
                            "rss_after_last_mb": last["worker_rss_mb"],
                            "growth": last["worker_rss_mb"] / third["worker_rss_mb"] - 1,
                            "peak_mb": max(t["worker_rss_mb"] for t in trials),
                            "object_store_after_3rd_mb": third["worker_shared_mb"],
                            "object_store_after_last_mb": last["worker_shared_mb"],
                            "own_growth": own[1] / own[0] - 1}
    return growth


def main() -> None:
    global GRID
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "benchmark.json")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp folder)")
    parser.add_argument("--rounds", type=int,
                        help="rounds of service, ideal, ideal, service (default: 2, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a small grid (resnet18, 50 %%, 1000 images), to check in minutes that it runs")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else 1 if args.quick else 2
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    GRID = QUICK_GRID if args.quick else FULL_GRID
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from sweep_service.worker import data

    data.prepare("synthetic", workdir / "data")  # shared by every run, not timed
    print(f"benchmark grid: {len(GRID['models'])} models x {len(GRID['pruners'])} pruners x "
          f"{len(GRID['rates'])} rates + baselines, {GRID['train_subset']} train / {GRID['test_subset']} "
          f"test images at 32 px, {SLOTS} slots of {GRID['resources']['cpus']} CPU", flush=True)
    # The machine's speed, probed between the parts: the ratios compare parts run minutes
    # apart, so they only hold if it stayed steady (on shared hosts it may not).
    probes = {"before service 1": matmul_peak_gflops(SLOTS)}
    order = "SIIS" * rounds
    steps = len(order) + 2
    runs: list[dict] = []
    ideals: list[dict] = []
    for step, part in enumerate(order, start=1):
        if part == "S":
            label = f"service {len(runs) + 1}"
            print(f"{step}/{steps} {label} ...", flush=True)
            runs.append(run_service(workdir, label.replace(" ", "-")))
            wall = runs[-1]["wall_s"]
        else:  # on the models and formats of the service run just before
            label = f"ideal {len(ideals) + 1}"
            print(f"{step}/{steps} {label} ...", flush=True)
            ideals.append(measure_ideal(runs[-1]["rows"]))
            wall = ideals[-1]["wall_s"]
        probes[f"after {label}"] = matmul_peak_gflops(SLOTS)
        print(f"    {wall:.1f} s", flush=True)
    first = runs[0]
    print(f"{steps - 1}/{steps} plain reference ...", flush=True)
    reference = run_reference(workdir, first["rows"])
    probes["after reference"] = matmul_peak_gflops(SLOTS)
    print(f"    {reference['wall_s']:.1f} s\n{steps}/{steps} accuracy noise: replicate seeds in both pipelines ...",
          flush=True)
    noise = measure_seed_noise(GRID, workdir, first["rows"], SLOTS, seeds=QUICK_SEEDS if args.quick else SEEDS)

    service_wall = statistics.mean(r["wall_s"] for r in runs)
    ideal_wall = statistics.mean(i["wall_s"] for i in ideals)
    rows_by_key = [{row["key"]: row for row in r["rows"]} for r in runs]
    trials = []
    for row in first["rows"]:
        each = [by_key[row["key"]] for by_key in rows_by_key]
        phases = {p: statistics.mean(r[f"time_{p}_s"] or 0.0 for r in each) for p in PHASES}
        total = statistics.mean(r["time_total_s"] for r in each)
        arithmetic = phases["finetune"] + phases["eval"]
        epochs = GRID["baseline_epochs"] if row["kind"] == "baseline" else GRID["finetune_epochs"]
        forward_flops = 2 * row["macs_after"]
        flops = forward_flops * (3 * GRID["train_subset"] * epochs + GRID["test_subset"])
        trials.append(dict(model=row["model"], pruner=row["pruner"], rate=row["rate"], accuracy=row["accuracy"],
                           accuracy_runs=[r["accuracy"] for r in each], total_s=total, phases_s=phases,
                           # Per service run, to tell a slow stretch of the host from a trial
                           # that trained in another format in that run.
                           arithmetic_runs_s=[(r["time_finetune_s"] or 0.0) + (r["time_eval_s"] or 0.0)
                                              for r in each],
                           compute_runs=[r["compute"] for r in each],
                           overhead=1 - arithmetic / total,
                           ideal_s=statistics.mean(i["per_trial_s"][row["key"]] for i in ideals),
                           ideal_measurements_s=[i["per_trial_s"][row["key"]] for i in ideals],
                           forward_mflops_per_image=forward_flops / 1e6,
                           train_mflops_per_image=3 * forward_flops / 1e6, gflop=flops / 1e9))
    reference_acc = {(t["model"], t["pruner"], round(t["rate"], 3)): t["accuracy"] for t in reference["trials"]}
    # Pruned trials only: they start from the same weights in both pipelines, while each
    # pipeline trains its own baseline from scratch.
    diffs = [t["accuracy"] - reference_acc[(t["model"], t["pruner"], round(t["rate"], 3))]
             for t in trials if t["pruner"] != "none"]
    # Each service run's fine-tuning and evaluation against the same arithmetic in its pair's
    # ideal: near 1 when the host kept its speed through the pair. A pair the host moved
    # apart shows it here, and not only in its ratio.
    arithmetic_vs_ideal = [sum((row["time_finetune_s"] or 0.0) + (row["time_eval_s"] or 0.0) for row in r["rows"])
                           / sum(i["per_trial_s"].values()) for i, r in zip(ideals, runs)]
    total_gflop = sum(t["gflop"] for t in trials)
    arithmetic_total = sum(t["phases_s"]["finetune"] + t["phases_s"]["eval"] for t in trials)
    overhead_total = 1 - arithmetic_total / sum(t["total_s"] for t in trials)
    figures = dict(
        grid=GRID, slots=SLOTS, quick=args.quick,
        service_wall_s=service_wall, service_runs_wall_s=[r["wall_s"] for r in runs],
        # The measurement stage's seconds (its measurement_runs row) over the service's wall, summed over the runs.
        measurement_stage_runs_s=[r["measurement_s"] for r in runs],
        measurement_stage_variants=runs[0]["measured_variants"],
        measurement_stage_share=sum(r["measurement_s"] for r in runs) / sum(r["wall_s"] for r in runs),
        service_timelines=[r["timeline"] for r in runs],
        service_arithmetic_vs_ideal=arithmetic_vs_ideal,
        ideal_wall_s=ideal_wall, ideal_measurements_wall_s=[i["wall_s"] for i in ideals],
        reference_wall_s=reference["wall_s"],
        speedup_vs_reference=reference["wall_s"] / service_wall,
        # Sums over the rounds of service, ideal, ideal, service (see the module docstring).
        sweep_efficiency=ideal_wall / service_wall,
        sweep_efficiency_pairs=[i["wall_s"] / r["wall_s"] for i, r in zip(ideals, runs)],
        overhead_fraction_total=overhead_total,
        overhead_fraction_median=statistics.median(t["overhead"] for t in trials),
        overhead_fraction_max=max(t["overhead"] for t in trials),
        accuracy_service_mean=statistics.mean(t["accuracy"] for t in trials),
        accuracy_reference_mean=statistics.mean(reference_acc.values()),
        accuracy_diff_mean=statistics.mean(diffs), accuracy_diff_abs_max=max(abs(d) for d in diffs),
        # A model's trials share one draw of data order and augmentation per pipeline (one
        # seed), so each model's mean difference carries the noise of two draws, sd * sqrt(2),
        # whatever the number of its trials; sd is measured by the replicate seeds.
        accuracy_diff_noise=noise["sd"] * math.sqrt(2 / len(GRID["models"])),
        accuracy_seed_noise=noise,
        accuracy_between_service_runs_abs_max=max(max(t["accuracy_runs"]) - min(t["accuracy_runs"])
                                                  for t in trials),
        achieved_gflops=total_gflop / service_wall,
        matmul_peak_gflops=max(probes.values()), machine_speed_probes_gflops=probes,
        allocators={"service workers": sorted({row["allocator"] for r in runs for row in r["rows"]}),
                    "ideal": sorted({a for i in ideals for a in i["allocators"]})},
        worker_rss={f"run {n} worker {pid}": growth for n, r in enumerate(runs, start=1)
                    for pid, growth in _rss_growth(r["rows"]).items()},
        trials=trials, reference_trials=reference["trials"],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print_table(figures)
    print(f"\nfigures: {args.out}")


def _listed(seconds: list[float]) -> str:
    if len(seconds) == 1:
        return f"{seconds[0]:.1f}"
    return ", ".join(f"{s:.1f}" for s in seconds[:-1]) + f" and {seconds[-1]:.1f}"


def print_table(f: dict) -> None:
    print(f"\n{'trial':<26}{'acc':>6}  {'format':<19}" + "".join(f"{p:>9}" for p in PHASES)
          + f"{'total':>8}{'ideal':>8}{'ovh':>6}{'MFLOP/img':>10}")
    for t in f["trials"]:
        label = f"{t['model']} {t['pruner']} {t['rate']:.0%}" if t["pruner"] != "none" else f"{t['model']} baseline"
        print(f"{label:<26}{t['accuracy']:>6.1%}  {'/'.join(sorted(set(t['compute_runs']))):<19}"
              + "".join(f"{t['phases_s'][p]:>9.2f}" for p in PHASES)
              + f"{t['total_s']:>8.1f}{t['ideal_s']:>8.1f}{t['overhead']:>6.1%}{t['forward_mflops_per_image']:>10.1f}")
    runs, ideals = f["service_runs_wall_s"], f["ideal_measurements_wall_s"]
    print(f"\n(phases: mean of the {len(runs)} service runs; ideal: mean of the {len(ideals)} measurements)")
    print(f"wall time: service {f['service_wall_s']:.1f} s (runs {_listed(runs)}), plain reference "
          f"{f['reference_wall_s']:.1f} s, ideal {f['ideal_wall_s']:.1f} s on {f['slots']} slots ({_listed(ideals)})")
    print("C heap allocator: " + ", ".join(f"{who} {' + '.join(names)}" for who, names in f["allocators"].items()))
    pairs = f["sweep_efficiency_pairs"]
    print(f"sweep efficiency: {f['sweep_efficiency']:.3f} over all {len(pairs)} pairs; "
          + ", ".join(f"service {n} with ideal {n} {pair:.3f}" for n, pair in enumerate(pairs, start=1)))
    for n, (t, arithmetic) in enumerate(zip(f["service_timelines"], f["service_arithmetic_vs_ideal"]), start=1):
        print(f"service run {n}: {t['before_first_trial_s']:.1f} s to the first dispatch, {t['trials_s']:.1f} s of "
              f"trials (slots idle {t['slots_idle_fraction']:.1%}), {t['after_last_trial_s']:.1f} s after the last "
              f"result, of which the measurement stage {f['measurement_stage_runs_s'][n - 1]:.1f} s; its "
              f"fine-tuning and evaluation took {abs(arithmetic - 1):.1%} "
              f"{'more' if arithmetic >= 1 else 'less'} than ideal {n}'s")
    print(f"measurement stage: {f['measurement_stage_variants']} variants in "
          f"{_listed(f['measurement_stage_runs_s'])} s, {f['measurement_stage_share']:.1%} of the service's wall time")
    n, models = f["accuracy_seed_noise"], len(f["grid"]["models"])
    print(f"accuracy: service mean {f['accuracy_service_mean']:.1%}, reference mean "
          f"{f['accuracy_reference_mean']:.1%}; pruned trials (same starting weights), paired difference "
          f"{f['accuracy_diff_mean']:+.2%} (largest single {f['accuracy_diff_abs_max']:.1%}) against a noise of "
          f"±{2 * f['accuracy_diff_noise']:.2%} (2 SD of the mean of {models} models' draws); the service runs "
          f"differ by at most {f['accuracy_between_service_runs_abs_max']:.2%}")
    print(f"accuracy noise, {n['pruner']} {n['rate']:.0%} from each baseline, seeds {n['seeds']} in both pipelines: "
          f"one trial's SD {n['sd']:.2%}; " + "; ".join(
              f"{model} service {statistics.mean(r['service']):.2%}, reference {statistics.mean(r['reference']):.2%}"
              for model, r in n["by_model"].items())
          + f"; difference {n['mean_difference']:+.2%} ± {2 * n['mean_difference_stderr']:.2%} (2 SE)")
    print(f"arithmetic: {f['achieved_gflops']:.1f} GFLOP/s achieved vs {f['matmul_peak_gflops']:.0f} GFLOP/s "
          "fp32 matmul peak")
    probes = f["machine_speed_probes_gflops"]
    spread = max(probes.values()) / min(probes.values()) - 1
    print("machine speed (fp32 matmul, GFLOP/s): " + ", ".join(f"{v:.0f} {k}" for k, v in probes.items())
          + (f"; it varied by {spread:.0%} during the run, so the ratios below carry that much noise"
             if spread > 0.10 else "; steady"))
    for worker, r in f["worker_rss"].items():
        print(f"{worker}: RSS after 3rd trial {r['rss_after_3rd_mb']:.0f} MB, after last ({r['trials']}) "
              f"{r['rss_after_last_mb']:.0f} MB ({r['growth']:+.1%}), peak {r['peak_mb']:.0f} MB; of which Ray "
              f"object-store pages {r['object_store_after_3rd_mb']:.0f} -> {r['object_store_after_last_mb']:.0f} MB, "
              f"the worker's own {r['own_growth']:+.1%}")
    print()
    if f["quick"]:
        print("quick grid: the targets below are set for the full grid, whose two models' baselines fill both "
              "slots at the start; here one baseline runs alone")
    for name, ok, value in checks(f):
        print(f"{'PASS' if ok else 'FAIL' if ok is False else 'N/A '}  {name}: {value}")


def checks(f: dict) -> list[tuple[str, bool | None, str]]:
    """Each target, whether the run met it (None: the run cannot tell), and the figures."""
    n = f["accuracy_seed_noise"]
    growth = [r["growth"] for r in f["worker_rss"].values()]
    return [
        (f"service >= {MIN_SPEEDUP}x faster than the plain reference", f["speedup_vs_reference"] >= MIN_SPEEDUP,
         f"{f['speedup_vs_reference']:.2f}x ({f['reference_wall_s']:.1f} s / {f['service_wall_s']:.1f} s)"),
        ("same accuracy within noise (grid: paired mean difference within 2 SD of the draws' noise; "
         "replicate seeds: difference of means within 2 SE)",
         abs(f["accuracy_diff_mean"]) <= 2 * f["accuracy_diff_noise"]
         and abs(n["mean_difference"]) <= 2 * n["mean_difference_stderr"],
         f"grid {f['accuracy_diff_mean']:+.2%} vs ±{2 * f['accuracy_diff_noise']:.2%}; replicates "
         f"{n['mean_difference']:+.2%} vs ±{2 * n['mean_difference_stderr']:.2%}"),
        (f"sweep efficiency >= {MIN_EFFICIENCY}", f["sweep_efficiency"] >= MIN_EFFICIENCY,
         f"{f['sweep_efficiency']:.3f} ({f['ideal_wall_s']:.1f} s ideal / {f['service_wall_s']:.1f} s)"),
        (f"per-trial overhead <= {MAX_OVERHEAD:.0%} of trial wall time", f["overhead_fraction_total"] <= MAX_OVERHEAD,
         f"{f['overhead_fraction_total']:.1%} overall, median {f['overhead_fraction_median']:.1%}"),
        (f"measurement stage <= {MAX_MEASUREMENT_SHARE:.0%} of the service's wall time",
         f["measurement_stage_share"] <= MAX_MEASUREMENT_SHARE,
         f"{f['measurement_stage_share']:.1%} ({sum(f['measurement_stage_runs_s']):.1f} s of "
         f"{sum(f['service_runs_wall_s']):.1f} s)"),
        (f"worker RSS after last trial within {MAX_RSS_GROWTH:.0%} of after 3rd",
         all(abs(g) <= MAX_RSS_GROWTH for g in growth) if growth else None,
         ", ".join(f"{g:+.1%}" for g in growth) if growth else "no worker ran 4 trials in this grid"),
    ]


if __name__ == "__main__":
    main()
