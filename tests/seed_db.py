"""Test helpers for the report: seed a results database through the real ResultStore
with plausible, made-up figures; share seeded databases and rendered reports between
tests; parse a report page.

The figures follow the reference study's story (see shared/REFERENCE.md): resnet50
degrades least (about 95 % unpruned, about 80 % at rate 0.8), vgg16 collapses past
0.4; alexnet, vgg16 and resnet50 lose parameters in proportion to the rate while the
others level off past 0.4. They are deterministic, so tests can name expected trials. Seed 0 has the figures it
always had; other seeds add a seed's own noise (about a point of accuracy, as measured on
real trials), so that sweeps with repeats have spread to show.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable

from sweep_service.coordinator.config import parse_config
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.store import RUNG_STOP, ResultStore, utcnow
from sweep_service.spec import BASELINE, COMPLETED, FAILED

REFERENCE_MODELS = ("resnet50", "vgg16", "mobilenet_v2", "densenet121", "efficientnet_b0",
                    "googlenet", "alexnet")
REFERENCE_PRUNERS = ("l1norm", "l2norm", "fpgm")
REFERENCE_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

# model: baseline accuracy, params, MACs (64 px), latency ms, accuracy drop at 0.8, linear reduction
PROFILES: dict[str, tuple[float, int, int, float, float, bool]] = {
    "resnet50": (0.951, 23_528_522, 340_000_000, 9.1, 0.15, True),
    "vgg16": (0.921, 134_301_514, 1_260_000_000, 12.4, 0.0, True),  # collapses instead
    "mobilenet_v2": (0.931, 2_236_682, 26_000_000, 4.2, 0.33, False),
    "densenet121": (0.942, 6_964_106, 235_000_000, 14.3, 0.26, False),
    "efficientnet_b0": (0.936, 4_020_358, 32_000_000, 7.2, 0.30, False),
    "googlenet": (0.926, 5_610_154, 123_000_000, 6.3, 0.24, False),
    "alexnet": (0.884, 57_044_810, 110_000_000, 2.1, 0.22, True),
    "resnet18": (0.930, 11_181_642, 148_000_000, 3.9, 0.20, True),
}
PRUNER_BONUS = {"l1norm": 0.0, "l2norm": 0.002, "fpgm": 0.012}
SEED_NOISE = 0.01  # accuracy spread of one configuration over seeds
WORKER_VERSIONS = {"python": "3.11.7", "torch": "2.14.1+cu130", "torchvision": "0.29.1", "nni": "3.0",
                   "ray": "2.60.0"}


def figures(model: str, pruner: str, rate: float, seed: int = 0, *, pruned_figures: bool = True) -> dict[str, Any]:
    """The result fields of one completed trial (rate 0 / pruner 'none' is the baseline).
    Without `pruned_figures`, as recorded before trials reported their accuracy before
    fine-tuning, achieved sparsity and worker versions."""
    base_acc, params, macs, latency, drop80, linear = PROFILES[model]
    noise = random.Random(f"{model}/{pruner}/{rate}")
    seed_noise = random.Random(f"{model}/{pruner}/{rate}/{seed}").gauss(0, SEED_NOISE) if seed else 0.0
    if rate == 0:
        accuracy, reduction = base_acc, 0.0
    elif model == "vgg16":
        accuracy = base_acc - 0.03 * (rate / 0.4) ** 2 if rate <= 0.4 else \
            0.10 + (base_acc - 0.13) * math.exp(-(rate - 0.4) / 0.1) * 0.9
    else:
        accuracy = base_acc - drop80 * (rate / 0.8) ** 1.6
    if rate > 0:
        accuracy += PRUNER_BONUS.get(pruner, 0.0) * rate + noise.uniform(-0.004, 0.004)
        reduction = 0.96 * rate if linear else (0.8 * rate if rate <= 0.4 else 0.32 + 0.22 * (rate - 0.4))
        reduction = min(0.97, max(0.0, reduction + noise.uniform(-0.008, 0.008)))
    accuracy += seed_noise
    mac_reduction = min(0.97, reduction * 1.08)
    params_after = round(params * (1 - reduction))
    extra: dict[str, Any] = {}
    if pruned_figures:
        extra["worker_versions_json"] = json.dumps(WORKER_VERSIONS, sort_keys=True)
        if rate > 0:
            own = random.Random(f"{model}/{pruner}/{rate}/pruned")  # the draws above stay as they were
            # Before fine-tuning the criterion alone decides: accuracy falls fast towards chance.
            before = 0.1 + (base_acc - 0.1) * (1 - rate) ** 2.5 + PRUNER_BONUS.get(pruner, 0.0) * 3 * rate
            extra.update(accuracy_pruned=round(min(max(before + seed_noise + own.uniform(-0.01, 0.01), 0.09),
                                                   0.999), 4),
                         channel_sparsity=round(rate * (1.0 if linear else 0.9) + own.uniform(-0.01, 0.0), 4))
    return dict(
        **extra,
        status=COMPLETED,
        accuracy=round(min(max(accuracy, 0.09), 0.999), 4),
        params_before=params, params_after=params_after, param_reduction=1 - params_after / params,
        macs_before=macs, macs_after=round(macs * (1 - mac_reduction)), mac_reduction=mac_reduction,
        model_size_bytes=params_after * 4 + 180_000,
        latency_ms=round(latency * (1 - 0.65 * mac_reduction) * noise.uniform(0.97, 1.03), 3),
        time_startup_s=0.4, time_build_s=0.8, time_prune_s=0.0 if rate == 0 else 1.5,
        time_speedup_s=0.0 if rate == 0 else 3.0, time_data_s=0.2,
        time_finetune_s=round(40 * (1 - reduction), 2), time_eval_s=2.0, time_measure_s=1.1,
        time_total_s=round(49 * (1 - reduction) + 5, 2), time_wait_s=0.3,
        worker_host=f"worker-{noise.randint(1, 3)}", worker_pid=1000 + noise.randint(0, 99),
        worker_rss_mb=900.0, threads=1,
    )


def seed_sweep(db_path: str | Path, *, models: Iterable[str] = REFERENCE_MODELS,
               pruners: Iterable[str] = REFERENCE_PRUNERS, rates: Iterable[float] = REFERENCE_RATES,
               failed: Iterable[tuple[str, str, float]] = (), done: int | None = None,
               constraints: dict[str, Any] | None = None, status: str = "finished",
               dataset: str = "synthetic", name: str = "reference", output_dir: str | Path | None = None,
               links: bool = True, running: int = 0, seeds: Iterable[int] = (0,),
               pruned_figures: bool = True, adaptive: dict[str, Any] | None = None,
               stopped: dict[tuple, float] | None = None,
               skipped: Iterable[tuple[str, str, float]] = (), unstructured: Iterable[str] = ()) -> str:
    """Record a sweep of `models` x `pruners` x `rates` x `seeds`; returns its sweep id.

    `failed` trials are recorded as failures; with `done`, only the first `done` trials
    of the grid are recorded, the next `running` are marked running and the rest stay
    pending (a sweep in progress; pass status="running"). With
    `links` false, pruned rows lack baseline_accuracy/accuracy_drop (as before the
    coordinator links them). `pruned_figures`: see figures(). Pruners in `unstructured` zero
    weights instead of removing parameters (their rows say so, as the `level` plugin's do).
    A running sweep's lock is held, with a fresh heartbeat, as its coordinator would hold it.

    `adaptive`: the sweep is configured `search: adaptive` with these settings; the trials
    (model, pruner, rate) or (model, pruner, rate, seed) in `stopped` are recorded as the
    search records a trial stopped at its first rung (a rung result at that budget, then the
    stop decision, accuracy lower by the fine-tune it missed), those in `skipped` as skipped
    (not run).
    """
    db_path = Path(db_path)
    config = parse_config({
        "name": name, "models": list(models), "pruners": list(pruners), "rates": list(rates),
        "dataset": dataset, "weights": "imagenet", "image_size": 64,
        "database": str(db_path), "output_dir": str(output_dir or db_path.parent / "out"),
        "constraints": constraints,
        **({"search": "adaptive", "adaptive": adaptive} if adaptive is not None else {}),
        **({"seeds": list(seeds)} if list(seeds) != [0] else {}),
    })
    specs = list(expand(config))
    sweep_id = config.sweep_id()
    store = ResultStore(db_path)
    store.begin_sweep(sweep_id=sweep_id, name=config.name, config_json=config.to_json(),
                      dataset=config.dataset, weights=config.weights,
                      versions={"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1",
                                "nni": "3.0", "ray": "2.60.0"},
                      provenance={"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
                                  "git_note": "", "data_sha256": "ab" * 32, "data_files": 7,
                                  "data_bytes": 31_000_000} if pruned_figures else None)
    store.add_trials(sweep_id, specs)
    failed = {(m, p, round(r, 6)) for m, p, r in failed}
    stopped = {(m, p, round(r, 6), *seed): budget for (m, p, r, *seed), budget in (stopped or {}).items()}
    skipped = {(m, p, round(r, 6)) for m, p, r in skipped}
    baselines: dict[tuple[str, int], float] = {}
    for spec in specs[:done]:
        if (spec.model, spec.pruner, round(spec.rate, 6)) in failed:
            store.mark_running(sweep_id, spec.key)
            store.record(sweep_id, spec.key, {
                "status": FAILED, "worker_host": "worker-2",
                "error": "speedup failed: RuntimeError: shape mismatch in torch.cat: "
                         "[1, 64, 8, 8] vs [1, 61, 8, 8]\n  File \"nni/compression/speedup.py\", line 212"})
            continue
        where = (spec.model, spec.pruner, round(spec.rate, 6))
        if where in skipped:
            store.skip(sweep_id, spec.key, f"line stopped: {spec.model} {spec.pruner} fell below the floor "
                                           "at a lower rate")
            continue
        result = figures(spec.model, spec.pruner, spec.rate, spec.seed, pruned_figures=pruned_figures)
        if spec.kind != BASELINE:
            result["structure"] = "structured"
        if spec.pruner in unstructured:
            base = figures(spec.model, "none", 0.0, spec.seed, pruned_figures=pruned_figures)
            result.update(structure="unstructured", weights_zeroed=spec.rate, param_reduction=0.0,
                          params_after=result["params_before"], macs_after=result["macs_before"], mac_reduction=0.0,
                          model_size_bytes=base["model_size_bytes"], latency_ms=base["latency_ms"],
                          channel_sparsity=None)
        if adaptive is not None:  # as workers report it: the share of the fine-tune trained
            result["budget"] = 1.0
        if where in stopped or (*where, spec.seed) in stopped:
            budget = stopped.get(where, stopped.get((*where, spec.seed)))
            result.update(budget=budget, accuracy=result["accuracy"] - 0.1 * (1 - budget))
            store.mark_running(sweep_id, spec.key)
            store.record_rung(sweep_id, spec.key, 1, result, str(db_path.parent / f"{spec.key}.pt"), add_times=False)
            store.decide_rung(sweep_id, spec.key, budget, RUNG_STOP,
                              f"below the front after {budget:.0%} of the fine-tune: another trial costs no more "
                              "and is more accurate")
            continue
        if spec.kind == BASELINE:
            baselines[(spec.model, spec.seed)] = result["accuracy"]
        if links and (spec.model, spec.seed) in baselines:
            result["baseline_accuracy"] = baselines[(spec.model, spec.seed)]
            result["accuracy_drop"] = baselines[(spec.model, spec.seed)] - result["accuracy"]
        store.mark_running(sweep_id, spec.key)
        store.record(sweep_id, spec.key, result)
    if done is not None:
        for spec in specs[done:done + running]:
            store.mark_running(sweep_id, spec.key)
    if status != "running":
        store.end_sweep(sweep_id, status)
    else:
        now = utcnow()
        store.insert_lock(dict(sweep_id=sweep_id, token="seeded", host="seed-host", pid=1, pid_started=0.0,
                               started_at=now, heartbeat_at=now))
    store.engine.dispose()
    return sweep_id


# format: share of the fp32 file, accuracy change (points), latency against fp32, peak MB against fp32
VARIANT_PROFILES = {"fp32": (1.0, 0.0, 1.0, 1.0), "fp16": (0.5, 0.0, 1.05, 1.0), "int8": (0.26, -0.3, 0.45, 0.4)}
EDGE_NODE = dict(node_host="edge-1", node_id="ab" * 28, cpu_model="Cortex-A76", cpu_arch="aarch64", cpus=1.0,
                 load_avg=0.1)


def seed_variants(db_path: str | Path, sweep_id: str, models_dir: str | Path, *,
                  formats: Iterable[str] = ("fp32", "fp16", "int8"), node: dict[str, Any] | None = None,
                  measure: bool = True, failed_format: str | None = None) -> None:
    """Record the variants of every completed trial as the sweep and the measurement stage
    would: a small file per variant under `models_dir`, its row (size in the proportions of
    VARIANT_PROFILES, accuracy a little off its trial's), and with `measure` a finished
    measurement run on `node` (EDGE_NODE by default) at batch sizes 1 and 8. With
    `failed_format`, that format of every pruned trial is recorded as failed."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(db_path)
    trials = {t["key"]: t for t in store.trials(sweep_id, status=COMPLETED)}  # recording variants clears latency
    for trial in trials.values():
        rows = []
        for name in formats:
            share, points, _, _ = VARIANT_PROFILES[name]
            if name == failed_format and trial["kind"] != BASELINE:
                rows.append(dict(format=name, runtime="onnxruntime 1.32.0", error="quantize_static failed: boom"))
                continue
            path = models_dir / f"{trial['model']}-{trial['key']}.{name}.onnx"
            path.write_bytes(name.encode() * 8)
            size = round(trial["model_size_bytes"] * share)
            rows.append(dict(format=name, runtime="onnxruntime 1.32.0", path=str(path), size_bytes=size,
                             compressed_bytes=round(size * 0.92), accuracy=round(trial["accuracy"] + points / 100, 4),
                             time_s=1.5))
        store.record_variants(sweep_id, trial["key"], rows)
    if measure:
        run_id = store.begin_measurement(sweep_id, dict(threads=1, batch_sizes=[1, 8], warmup=10, rounds=10,
                                                        runs=20, image_size=64), "edge")
        rows = []
        variants = {v["id"]: v for v in store.variants(sweep_id)}
        for v in variants.values():
            if v["error"]:
                continue
            _, _, speed, memory = VARIANT_PROFILES[v["format"]]
            latency = trials[v["trial_key"]]["latency_ms"] * speed
            for batch in (1, 8):
                ms = latency * (1 if batch == 1 else 6)
                rows.append(dict(variant_id=v["id"], batch_size=batch, threads=1, latency_ms=ms,
                                 latency_p10_ms=ms * 0.95, latency_p90_ms=ms * 1.1, round_spread=0.04,
                                 round_medians_json=json.dumps([ms] * 10),
                                 peak_rss_mb=60 + v["size_bytes"] / 1e6 * 2.5 * memory, **(node or EDGE_NODE)))
        store.record_measurements(run_id, rows)
        store.end_measurement(run_id, "finished", seconds=12.0, variants=len(rows) // 2)
        for row in rows:  # as the stage does: a trial's latency is its fp32 variant's at batch 1
            v = variants[row["variant_id"]]
            if v["format"] == "fp32" and row["batch_size"] == 1:
                store.set_latency(sweep_id, v["trial_key"], row["latency_ms"], "onnxruntime 1.32.0 fp32, batch 1")
    store.engine.dispose()


_CACHE: dict[str, Path] = {}


def seeded_copy(dest: str | Path, **kwargs: Any) -> tuple[Path, str]:
    """A copy of a seeded database at `dest`/results.db and its sweep id. Each set of
    arguments is seeded once per test session (seeding the full grid takes seconds)."""
    key = repr(sorted(kwargs.items()))
    if key not in _CACHE:
        import atexit
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="seeded-"))
        atexit.register(shutil.rmtree, folder, True)
        sweep_id = seed_sweep(folder / "results.db", output_dir=folder / "out", **kwargs)
        (folder / "sweep_id").write_text(sweep_id)
        _CACHE[key] = folder
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_CACHE[key] / "results.db", dest / "results.db")
    return dest / "results.db", (_CACHE[key] / "sweep_id").read_text()


_REPORTS: dict[str, Path] = {}


def keep_report(name: str, folder: str | Path) -> None:
    """Remember a rendered report folder for other tests of this session (its charts
    take seconds to draw; with a copy, `write_report` finds them up to date)."""
    _REPORTS[name] = Path(folder)


def copy_kept_report(name: str, dest: str | Path) -> bool:
    """Copy a report folder kept under `name` to `dest`; False if none was kept."""
    if name not in _REPORTS or not _REPORTS[name].is_dir():
        return False
    shutil.copytree(_REPORTS[name], dest, dirs_exist_ok=True)
    return True


if __name__ == "__main__":  # seed a database to look at: python tests/seed_db.py PATH
    import sys

    print(seed_sweep(sys.argv[1], failed=[("googlenet", "fpgm", 0.8), ("densenet121", "l1norm", 0.7)]))


class PageParser(HTMLParser):
    """What the report tests check in a page: images, tables (rows of cell texts by
    table id), whether it watches a live sweep (its #live-status note) and links."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self.live = False
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif a.get("id") == "live-status":
            self.live = True
        elif tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser
