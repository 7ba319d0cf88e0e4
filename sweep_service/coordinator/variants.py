"""A trial's saved files: its model (`.pt`) and its deployable variants (`.onnx`, one per
format), under the sweep's `output_dir/models/`, and the variants a finished trial still
lacks when a sweep asks for more formats than it was run with (made from the saved model
on a worker, without retraining).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sweep_service.coordinator.cluster import cluster_slots
from sweep_service.coordinator.store import ResultStore
from sweep_service.files import write_atomic
from sweep_service.spec import BASELINE, COMPLETED, TrialSpec


def artifact_stem(spec: TrialSpec) -> str:
    """The file name of a trial's saved files, without the extension: model, pruner, rate, seed, key."""
    stem = f"{spec.model}-baseline" if spec.kind == BASELINE else f"{spec.model}-{spec.pruner}-{spec.rate:g}"
    return f"{stem}-seed{spec.seed}-{spec.key}"


def save_variants(store: ResultStore, sweep_id: str, spec: TrialSpec, variants: list, models_dir: Path) -> None:
    """Write each variant's file (`<stem>.<format>.onnx`) and record its row."""
    rows = []
    for variant in variants:
        path = None
        if variant.data is not None:
            path = models_dir / f"{artifact_stem(spec)}.{variant.format}.onnx"
            write_atomic(path, variant.data)
        rows.append(dict(format=variant.format, runtime=variant.runtime, path=str(path) if path else None,
                         size_bytes=variant.size_bytes, compressed_bytes=variant.compressed_bytes,
                         accuracy=variant.accuracy, time_s=variant.seconds, error=variant.error))
    store.record_variants(sweep_id, spec.key, rows)


def missing_variants(store: ResultStore, sweep_id: str, specs: list[TrialSpec]) -> dict[str, tuple[str, ...]]:
    """Completed trials whose saved model is there but which lack some of their spec's
    formats (a failed variant counts as made): {trial key: missing formats}."""
    made: dict[str, set[str]] = {}
    for variant in store.variants(sweep_id):
        made.setdefault(variant["trial_key"], set()).add(variant["format"])
    rows = {row["key"]: row for row in store.trials(sweep_id, status=COMPLETED)}
    missing = {}
    for spec in specs:
        row = rows.get(spec.key)
        if row is None or not row["artifact_path"] or not Path(row["artifact_path"]).is_file():
            continue
        lacking = tuple(f for f in spec.quantize if f not in made.get(spec.key, set()))
        if lacking:
            missing[spec.key] = lacking
    return missing


def make_missing_variants(ray, store: ResultStore, sweep_id: str, specs: list[TrialSpec], models_dir: Path, *,
                          cpus: float, gpus: float, log: Callable[[str], Any] = print) -> int:
    """Make the variants completed trials lack from their saved models, as many trials at
    a time as the cluster has trial slots; returns how many trials got variants."""
    from sweep_service.worker.trial import export_saved_model

    todo = missing_variants(store, sweep_id, specs)
    if not todo:
        return 0
    by_key = {spec.key: spec for spec in specs}
    paths = {row["key"]: Path(row["artifact_path"]) for row in store.trials(sweep_id, status=COMPLETED)}
    task = ray.remote(export_saved_model).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    log(f"making {sum(len(f) for f in todo.values())} missing variants of {len(todo)} finished trials "
        "from their saved models (no retraining)")
    queue, in_flight = list(todo.items()), {}
    while queue or in_flight:
        while queue and len(in_flight) < max(1, cluster_slots(ray, cpus, gpus)):
            key, formats = queue.pop(0)
            in_flight[task.remote(by_key[key], paths[key].read_bytes(), formats)] = by_key[key]
        done, _ = ray.wait(list(in_flight), num_returns=1)
        spec = in_flight.pop(done[0])
        try:
            save_variants(store, sweep_id, spec, ray.get(done[0]), models_dir)
        except Exception as exc:  # its worker died, or its saved model does not load
            log(f"could not make the variants of {spec.label}: {type(exc).__name__}: {exc}")
    return len(todo)
