"""How far a trial's accuracy moves with the random draws alone, in each training pipeline.

Every trial of a model, in the service and in the plain reference alike, trains with the
grid's one seed: the same data order and augmentation draws within a pipeline, different
ones between the two. A model's accuracy pairs therefore share one draw per pipeline and
move together, and the spread of the pairs understates the noise of their mean. This
measures that noise directly: one pruned model per architecture (L1-norm at 50 % of the
service's baseline, pruned once and shared), fine-tuned from the same weights by both
pipelines with a few replicate seeds, on the same training subset. The replicate seeds
change only the draws (order, crops, flips, dropout), as the two pipelines' draws differ.
"""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path

SEEDS = (1, 2, 3, 4)
QUICK_SEEDS = (1, 2)  # the benchmark's --quick: enough for an SD, not for a tight one
PRUNER, RATE = "l1norm", 0.5  # a trial of the benchmark grid, whose format the service chose


def _replicates(job: dict) -> dict:
    """Prune the job's model once, then fine-tune and evaluate a copy per replicate seed in
    the job's pipeline."""
    import plain_reference as reference
    import torch

    from sweep_service.quiet import quiet_nni

    torch.set_num_threads(1)  # one slot each, as both pipelines run side by side
    grid, name = job["grid"], job["model"]
    baseline = reference.build(name)
    baseline.load_state_dict(torch.load(job["start_from"], weights_only=True))
    torch.manual_seed(grid["seed"])
    with quiet_nni():
        pruned = reference.prune(baseline, name, PRUNER, RATE)
    fine_tune = _in_reference if job["pipeline"] == "reference" else _in_service
    return {"model": name, "pipeline": job["pipeline"], "accuracies": fine_tune(pruned, job)}


def _in_reference(pruned, job: dict) -> list[float]:
    import plain_reference as reference
    import torch
    from torch.utils.data import DataLoader

    grid, opt, accuracies = job["grid"], job["grid"]["optimizer"], []
    train_subset, test_loader = reference.data({**grid, "data_root": job["reference_root"]})
    for seed in job["seeds"]:
        model = copy.deepcopy(pruned)
        torch.manual_seed(seed)
        loader = DataLoader(train_subset, batch_size=grid["batch_size"], shuffle=True)
        reference.train(model, loader, grid["finetune_epochs"], opt["lr"], opt["momentum"], opt["weight_decay"])
        accuracies.append(reference.evaluate(model, test_loader))
    return accuracies


def _in_service(pruned, job: dict) -> list[float]:
    import torch

    from sweep_service.worker import data
    from sweep_service.worker.compute import Compute
    from sweep_service.worker.training import evaluate, train

    grid, cpu, compute, accuracies = job["grid"], torch.device("cpu"), Compute.parse(job["compute"]), []
    splits = data.load("synthetic", job["service_root"])
    train_set = data.subset(splits.train, grid["train_subset"], grid["seed"])
    test_batches = data.TensorBatches(data.subset(splits.test, grid["test_subset"], grid["seed"] + 1),
                                      batch_size=grid["eval_batch_size"])
    for seed in job["seeds"]:
        model = copy.deepcopy(pruned)
        torch.manual_seed(seed)
        batches = data.TensorBatches(train_set, batch_size=grid["batch_size"], shuffle=True, augment=True, seed=seed)
        train(model, batches, epochs=grid["finetune_epochs"], optimizer_settings=grid["optimizer"], device=cpu,
              compute=compute)
        accuracies.append(evaluate(model, test_batches, cpu, compute))
    return accuracies


def measure_seed_noise(grid: dict, workdir: Path, service_rows: list[dict], slots: int,
                       seeds: tuple[int, ...] = SEEDS) -> dict:
    """Per model, both pipelines' accuracies with each of `seeds`; `sd`: the pooled standard
    deviation of one trial's accuracy over the draws."""
    baselines = {r["model"]: r for r in service_rows if r["kind"] == "baseline"}
    # The format the service's own trial of this pruner and rate trained in.
    computes = {r["model"]: r["compute"] for r in service_rows if r["pruner"] == PRUNER and r["rate"] == RATE}
    jobs = [dict(grid=grid, model=name, pipeline=pipeline, seeds=seeds,
                 start_from=baselines[name]["artifact_path"], compute=computes[name],
                 service_root=str(workdir / "data"), reference_root=str(workdir / "data" / "synthetic-cifar10"))
            for name in grid["models"] for pipeline in ("service", "reference")]
    context = mp.get_context("spawn")
    with context.Pool(slots, initializer=_quiet) as pool:
        results = pool.map(_replicates, jobs)
        pool.close()  # let the workers exit on their own: terminated, they leak NNI's semaphore
        pool.join()
    by_model: dict[str, dict] = {}
    for r in results:
        by_model.setdefault(r["model"], {})[r["pipeline"]] = r["accuracies"]
    deviations = [a - statistics.mean(accs) for m in by_model.values() for accs in m.values() for a in accs]
    dof = len(deviations) - 2 * len(by_model)
    sd = (sum(d * d for d in deviations) / dof) ** 0.5
    return {"pruner": PRUNER, "rate": RATE, "seeds": list(seeds), "by_model": by_model, "sd": sd,
            "mean_difference": statistics.mean(
                statistics.mean(m["service"]) - statistics.mean(m["reference"]) for m in by_model.values()),
            "mean_difference_stderr": sd * (2 / (len(seeds) * len(by_model))) ** 0.5}


def _quiet() -> None:
    """Pool initializer. The reference prunes as its user would, with NNI's log line per
    graph node on stdout; errors still come back through the pool."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # plain_reference

