"""Results store: SQLite through SQLAlchemy. The coordinator is its only writer.

One row per sweep in `sweeps` (its config, data set, weights and library versions) and
one row per trial in `trials`, unique on (sweep_id, key): a re-run of the same config
finds its finished trials, and a trial is never recorded twice. A completed trial's
deployable files are rows of `variants` (one per format: fp32, fp16, int8), and each run
of the measurement stage is a row of `measurement_runs` with one row of `measurements`
per variant and batch size, naming the node and CPU that measured it.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sweep_service.spec import BASELINE, COMPLETED, PENDING, PRUNED, RUNNING, STATUSES


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SweepRow(Base):
    __tablename__ = "sweeps"

    sweep_id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    config_json: Mapped[str] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(String)
    weights: Mapped[str] = mapped_column(String)
    versions_json: Mapped[str] = mapped_column(Text, default="{}")
    # With `compute: auto`: {model: {"format": name, "timings": {format: seconds per step}}},
    # measured once, so that every trial of a model, in this run or a later one, trains alike.
    formats_json: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String, default=RUNNING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("sweep_id", "key", name="uq_trial_per_sweep"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.sweep_id"), index=True)
    key: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)  # BASELINE or PRUNED
    model: Mapped[str] = mapped_column(String)
    pruner: Mapped[str] = mapped_column(String)  # "none" for baselines
    rate: Mapped[float] = mapped_column(Float)  # fraction in [0, 1); 0 for baselines
    status: Mapped[str] = mapped_column(String, default=PENDING)
    spec_json: Mapped[str] = mapped_column(Text)
    # Pruned trials: how the plugin's choice became what speedup removed (docs/pruning.md).
    grouping: Mapped[str | None] = mapped_column(String, default=None)  # "dependency" or "layer"
    allocation: Mapped[str | None] = mapped_column(String, default=None)  # "uniform" or "global"

    accuracy: Mapped[float | None] = mapped_column(default=None)  # top-1, fraction
    accuracy_pruned: Mapped[float | None] = mapped_column(default=None)  # right after speedup, before fine-tuning
    baseline_accuracy: Mapped[float | None] = mapped_column(default=None)
    accuracy_drop: Mapped[float | None] = mapped_column(default=None)  # baseline - accuracy
    params_before: Mapped[int | None] = mapped_column(default=None)
    params_after: Mapped[int | None] = mapped_column(default=None)
    param_reduction: Mapped[float | None] = mapped_column(default=None)  # 1 - after/before
    macs_before: Mapped[int | None] = mapped_column(default=None)
    macs_after: Mapped[int | None] = mapped_column(default=None)
    mac_reduction: Mapped[float | None] = mapped_column(default=None)
    model_size_bytes: Mapped[int | None] = mapped_column(default=None)
    # Pruned trials: "structured" (parameters removed) or "unstructured" (weights zeroed,
    # none removed: param_reduction stays 0); the share of all parameters that are zero.
    structure: Mapped[str | None] = mapped_column(default=None)
    weights_zeroed: Mapped[float | None] = mapped_column(default=None)
    # The fp32 variant's median at the smallest batch size, from the latest measurement
    # run, and what measured it (runtime, batch, threads, node).
    latency_ms: Mapped[float | None] = mapped_column(default=None)
    latency_source: Mapped[str | None] = mapped_column(default=None)
    # Output filters removed / output filters of the selected layers, counted on the sped-up model.
    channel_sparsity: Mapped[float | None] = mapped_column(default=None)
    pruned_channels_json: Mapped[str | None] = mapped_column(Text, default=None)  # {layer: [kept, total]}
    # Largest |logit| difference between the sped-up and the masked model on a fixed batch.
    speedup_max_abs_diff: Mapped[float | None] = mapped_column(default=None)

    time_startup_s: Mapped[float | None] = mapped_column(default=None)
    time_build_s: Mapped[float | None] = mapped_column(default=None)
    time_group_s: Mapped[float | None] = mapped_column(default=None)  # finding the channel groups
    time_prune_s: Mapped[float | None] = mapped_column(default=None)
    time_speedup_s: Mapped[float | None] = mapped_column(default=None)
    time_data_s: Mapped[float | None] = mapped_column(default=None)
    time_finetune_s: Mapped[float | None] = mapped_column(default=None)
    time_eval_s: Mapped[float | None] = mapped_column(default=None)
    time_measure_s: Mapped[float | None] = mapped_column(default=None)  # count params and MACs, serialise
    time_export_s: Mapped[float | None] = mapped_column(default=None)  # make and evaluate the variants
    time_total_s: Mapped[float | None] = mapped_column(default=None)
    time_wait_s: Mapped[float | None] = mapped_column(default=None)  # submitted -> started

    worker_host: Mapped[str | None] = mapped_column(default=None)
    worker_pid: Mapped[int | None] = mapped_column(default=None)
    worker_rss_mb: Mapped[float | None] = mapped_column(default=None)  # after the trial
    worker_shared_mb: Mapped[float | None] = mapped_column(default=None)  # of it, Ray object-store pages
    threads: Mapped[int | None] = mapped_column(default=None)
    allocator: Mapped[str | None] = mapped_column(default=None)  # of the worker's C heap (sweep_service.worker.heap)
    compute: Mapped[str | None] = mapped_column(default=None)  # the format it trained in, e.g. "fp32"
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    artifact_path: Mapped[str | None] = mapped_column(String, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class VariantRow(Base):
    """A completed trial's model in one deployable format, as saved and evaluated."""

    __tablename__ = "variants"
    __table_args__ = (
        UniqueConstraint("sweep_id", "trial_key", "format", name="uq_variant_per_trial"),
        ForeignKeyConstraint(["sweep_id", "trial_key"], ["trials.sweep_id", "trials.key"]),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.sweep_id"), index=True)
    trial_key: Mapped[str] = mapped_column(String)
    format: Mapped[str] = mapped_column(String)  # fp32, fp16, int8
    runtime: Mapped[str | None] = mapped_column(default=None)  # what ran it, e.g. "onnxruntime 1.32.0"
    path: Mapped[str | None] = mapped_column(String, default=None)  # the saved .onnx file
    size_bytes: Mapped[int | None] = mapped_column(default=None)
    compressed_bytes: Mapped[int | None] = mapped_column(default=None)  # deflated (zip, gzip)
    accuracy: Mapped[float | None] = mapped_column(default=None)  # top-1 on the test set, in `runtime`
    time_s: Mapped[float | None] = mapped_column(default=None)  # to make and evaluate it
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MeasurementRunRow(Base):
    """One run of the measurement stage over a sweep's variants, with its protocol."""

    __tablename__ = "measurement_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.sweep_id"), index=True)
    protocol_json: Mapped[str] = mapped_column(Text)  # threads, batch sizes, warm-up, rounds, runs
    on: Mapped[str | None] = mapped_column(default=None)  # the Ray resource asked for, if any
    status: Mapped[str] = mapped_column(String, default=RUNNING)  # running, finished, failed
    error: Mapped[str | None] = mapped_column(Text, default=None)
    variants: Mapped[int | None] = mapped_column(default=None)  # how many it measured
    seconds: Mapped[float | None] = mapped_column(default=None)  # the stage's wall time
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class MeasurementRow(Base):
    """Latency and peak memory of one variant at one batch size, and what measured it."""

    __tablename__ = "measurements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("measurement_runs.id"), index=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(default=None)  # median of every timed call
    latency_p10_ms: Mapped[float | None] = mapped_column(default=None)
    latency_p90_ms: Mapped[float | None] = mapped_column(default=None)
    # (max - min) / median of the rounds' medians: how much the host drifted meanwhile
    round_spread: Mapped[float | None] = mapped_column(default=None)
    round_medians_json: Mapped[str | None] = mapped_column(Text, default=None)  # ms, in round order
    peak_rss_mb: Mapped[float | None] = mapped_column(default=None)  # of a fresh process loading and running it
    node_host: Mapped[str | None] = mapped_column(default=None)
    node_id: Mapped[str | None] = mapped_column(default=None)  # Ray's node id
    cpu_model: Mapped[str | None] = mapped_column(default=None)
    cpu_arch: Mapped[str | None] = mapped_column(default=None)  # e.g. x86_64, aarch64
    cpus: Mapped[float | None] = mapped_column(default=None)  # CPUs the process may use (affinity, cgroup quota)
    load_avg: Mapped[float | None] = mapped_column(default=None)  # the node's 1-minute load before measuring
    error: Mapped[str | None] = mapped_column(Text, default=None)


_VARIANT_OF_TRIAL = (TrialRow.sweep_id == VariantRow.sweep_id) & (TrialRow.key == VariantRow.trial_key)

# Result fields a worker may report; everything else in a row is the coordinator's.
RESULT_FIELDS = tuple(
    c.name
    for c in TrialRow.__table__.columns
    if c.name not in {"id", "sweep_id", "key", "kind", "model", "pruner", "rate", "spec_json", "grouping",
                      "allocation", "attempts"}
)
VARIANT_FIELDS = ("format", "runtime", "path", "size_bytes", "compressed_bytes", "accuracy", "time_s", "error")
MEASUREMENT_FIELDS = tuple(c.name for c in MeasurementRow.__table__.columns if c.name not in {"id", "run_id"})


class ResultStore:
    """Thin repository over the SQLite file; every method is one short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_new_columns(self.engine)

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the file's connections (the last one to close folds SQLite's write-ahead
        log into the database file)."""
        self.engine.dispose()

    @classmethod
    def open_existing(cls, path: str | Path) -> "ResultStore":
        if not Path(path).is_file():
            raise FileNotFoundError(f"no results database at {path}; run a sweep first or pass --db")
        return cls(path)

    # sweeps ---------------------------------------------------------------
    def begin_sweep(self, *, sweep_id: str, name: str, config_json: str, dataset: str,
                    weights: str, versions: dict[str, str]) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            if row is None:
                row = SweepRow(sweep_id=sweep_id, name=name, dataset=dataset, weights=weights)
                s.add(row)
            row.config_json = config_json
            row.versions_json = json.dumps(versions, sort_keys=True)
            row.status = RUNNING
            row.started_at = utcnow()
            row.finished_at = None

    def end_sweep(self, sweep_id: str, status: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            row.status = status
            row.finished_at = utcnow()

    def formats(self, sweep_id: str) -> dict[str, dict[str, Any]]:
        """Each model's measured training format (`compute: auto`), by model name."""
        with Session(self.engine) as s:
            return json.loads(s.get(SweepRow, sweep_id).formats_json or "{}")

    def set_format(self, sweep_id: str, model: str, fastest: str, timings: dict[str, float]) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            formats = json.loads(row.formats_json or "{}")
            formats[model] = {"format": fastest, "timings": timings}
            row.formats_json = json.dumps(formats, sort_keys=True)

    def sweep(self, sweep_id: str | None = None) -> dict[str, Any]:
        """The given sweep, or the most recently started one."""
        with Session(self.engine) as s:
            if sweep_id is None:
                row = s.scalars(select(SweepRow).order_by(SweepRow.started_at.desc())).first()
                if row is None:
                    raise LookupError(f"{self.path} holds no sweep yet")
            else:
                row = s.get(SweepRow, sweep_id)
                if row is None:
                    known = s.scalars(select(SweepRow.sweep_id)).all()
                    raise LookupError(f"no sweep {sweep_id!r} in {self.path}; known: {', '.join(known)}")
            return _as_dict(row)

    def sweeps(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            return [_as_dict(r) for r in s.scalars(select(SweepRow).order_by(SweepRow.started_at))]

    # trials ---------------------------------------------------------------
    def add_trials(self, sweep_id: str, specs: Iterable[Any]) -> int:
        """Insert a pending row for each spec not yet recorded; returns how many were new."""
        with Session(self.engine) as s, s.begin():
            known = set(s.scalars(select(TrialRow.key).where(TrialRow.sweep_id == sweep_id)))
            new = [spec for spec in specs if spec.key not in known]
            for spec in new:
                pruned = spec.kind == PRUNED
                s.add(TrialRow(sweep_id=sweep_id, key=spec.key, kind=spec.kind, model=spec.model,
                               pruner=spec.pruner, rate=spec.rate, status=PENDING,
                               spec_json=spec.to_json(), grouping=spec.grouping if pruned else None,
                               allocation=spec.allocation if pruned else None))
            return len(new)

    def reset_unfinished(self, sweep_id: str) -> int:
        """Trials left `running` by a coordinator that died go back to `pending`."""
        with Session(self.engine) as s, s.begin():
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id,
                                                    TrialRow.status == RUNNING)).all()
            for row in rows:
                row.status = PENDING
            return len(rows)

    def mark_running(self, sweep_id: str, key: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, key)
            row.status = RUNNING
            row.attempts += 1
            row.started_at = utcnow()
            row.error = None

    def record(self, sweep_id: str, key: str, result: dict[str, Any]) -> None:
        """Store a finished trial's result (status completed or failed)."""
        unknown = set(result) - set(RESULT_FIELDS)
        if unknown:
            raise KeyError(f"unknown result fields {sorted(unknown)}")
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, key)
            for name, value in result.items():
                setattr(row, name, value)
            row.finished_at = utcnow()

    def link_baselines(self, sweep_id: str) -> None:
        """Give each pruned trial its model's baseline accuracy and its accuracy drop."""
        with Session(self.engine) as s, s.begin():
            baselines = {
                row.model: row.accuracy
                for row in s.scalars(select(TrialRow).where(
                    TrialRow.sweep_id == sweep_id, TrialRow.kind == BASELINE, TrialRow.status == COMPLETED))
            }
            for row in s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id,
                                                        TrialRow.kind == PRUNED)):
                row.baseline_accuracy = baselines.get(row.model)
                row.accuracy_drop = (None if row.accuracy is None or row.baseline_accuracy is None
                                     else row.baseline_accuracy - row.accuracy)

    def trials(self, sweep_id: str, *, status: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            query = select(TrialRow).where(TrialRow.sweep_id == sweep_id)
            if status:
                query = query.where(TrialRow.status == status)
            if kind:
                query = query.where(TrialRow.kind == kind)
            query = query.order_by(TrialRow.model, TrialRow.pruner, TrialRow.rate)
            return [_as_dict(r) for r in s.scalars(query)]

    def counts(self, sweep_id: str) -> dict[str, int]:
        rows = self.trials(sweep_id)
        return {status: sum(r["status"] == status for r in rows) for status in STATUSES}

    # variants ---------------------------------------------------------------
    def record_variants(self, sweep_id: str, trial_key: str, variants: list[dict[str, Any]]) -> None:
        """Store a trial's variants (VARIANT_FIELDS each), replacing any it had in the same
        format: a replaced file's measurements go with it, and so does the trial's latency
        until the stage measures again."""
        with Session(self.engine) as s, s.begin():
            for fields in variants:
                unknown = set(fields) - set(VARIANT_FIELDS)
                if unknown:
                    raise KeyError(f"unknown variant fields {sorted(unknown)}")
                row = s.scalars(select(VariantRow).where(VariantRow.sweep_id == sweep_id,
                                                         VariantRow.trial_key == trial_key,
                                                         VariantRow.format == fields["format"])).one_or_none()
                if row is None:
                    row = VariantRow(sweep_id=sweep_id, trial_key=trial_key, format=fields["format"])
                    s.add(row)
                else:
                    s.execute(delete(MeasurementRow).where(MeasurementRow.variant_id == row.id))
                    row.created_at = utcnow()
                for name in VARIANT_FIELDS:
                    setattr(row, name, fields.get(name))
            trial = self._row(s, sweep_id, trial_key)
            trial.latency_ms = trial.latency_source = None

    def variants(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep's variants, each with its trial's model, pruner, rate, kind and status."""
        with Session(self.engine) as s:
            query = (select(VariantRow, TrialRow)
                     .join(TrialRow, _VARIANT_OF_TRIAL)
                     .where(VariantRow.sweep_id == sweep_id)
                     .order_by(TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, VariantRow.format))
            return [{**_as_dict(v), "model": t.model, "kind": t.kind, "pruner": t.pruner, "rate": t.rate,
                     "structure": t.structure, "trial_status": t.status} for v, t in s.execute(query)]

    # measurement runs ----------------------------------------------------------
    def begin_measurement(self, sweep_id: str, protocol: dict[str, Any], on: str | None) -> int:
        with Session(self.engine) as s, s.begin():
            row = MeasurementRunRow(sweep_id=sweep_id, protocol_json=json.dumps(protocol, sort_keys=True), on=on)
            s.add(row)
            s.flush()
            return row.id

    def record_measurements(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        with Session(self.engine) as s, s.begin():
            for fields in rows:
                unknown = set(fields) - set(MEASUREMENT_FIELDS)
                if unknown:
                    raise KeyError(f"unknown measurement fields {sorted(unknown)}")
                s.add(MeasurementRow(run_id=run_id, **fields))

    def end_measurement(self, run_id: int, status: str, *, seconds: float, variants: int,
                        error: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(MeasurementRunRow, run_id)
            row.status, row.seconds, row.variants, row.error = status, seconds, variants, error
            row.finished_at = utcnow()

    def measurement_runs(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep's measurement runs, oldest first."""
        with Session(self.engine) as s:
            query = select(MeasurementRunRow).where(MeasurementRunRow.sweep_id == sweep_id).order_by(
                MeasurementRunRow.id)
            return [_as_dict(r) for r in s.scalars(query)]

    def measurements(self, sweep_id: str, run_id: int | None = None) -> list[dict[str, Any]]:
        """The measurements of one run (default: the sweep's latest finished run), each with
        its variant's format and its trial's key, model, pruner, rate and kind."""
        with Session(self.engine) as s:
            if run_id is None:
                run_id = s.scalars(select(MeasurementRunRow.id).where(
                    MeasurementRunRow.sweep_id == sweep_id, MeasurementRunRow.status == "finished")
                    .order_by(MeasurementRunRow.id.desc())).first()
                if run_id is None:
                    return []
            query = (select(MeasurementRow, VariantRow, TrialRow)
                     .join(VariantRow, VariantRow.id == MeasurementRow.variant_id)
                     .join(TrialRow, _VARIANT_OF_TRIAL)
                     .where(MeasurementRow.run_id == run_id)
                     .order_by(TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, VariantRow.format,
                               MeasurementRow.batch_size))
            return [{**_as_dict(m), "format": v.format, "runtime": v.runtime, "trial_key": t.key, "model": t.model,
                     "kind": t.kind, "pruner": t.pruner, "rate": t.rate, "structure": t.structure}
                    for m, v, t in s.execute(query)]

    def set_latency(self, sweep_id: str, trial_key: str, latency_ms: float | None, source: str | None) -> None:
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, trial_key)
            row.latency_ms, row.latency_source = latency_ms, source

    @staticmethod
    def _row(s: Session, sweep_id: str, key: str) -> TrialRow:
        return s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.key == key)).one()


def _add_new_columns(engine) -> None:
    """Bring a database written by an earlier version up to date, keeping its rows.

    Columns are only ever added, all nullable, so a missing one is added empty.
    """
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            present = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(engine.dialect)
                    connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets `status` and `report` read while the coordinator writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _as_dict(row: Base) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}
