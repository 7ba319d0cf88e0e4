"""Results store: SQLite through SQLAlchemy.

One row per sweep in `sweeps` (its config, data set, weights and library versions), one
row per trial in `trials`, unique on (sweep_id, key): a re-run of the same config finds
its finished trials, and a trial is never recorded twice. `sweep_locks` says which
coordinator runs a sweep (sweep_service.coordinator.lock): each sweep has one writer. A
completed trial's deployable files are rows of `variants` (one per format: fp32, fp16,
int8), and each run of the measurement stage is a row of `measurement_runs` with one row
of `measurements` per variant and batch size, naming the node and CPU that measured it.
An adaptive sweep also keeps each pruned trial's intermediate results in `rungs` (its
short-budget accuracy, the checkpoint it can continue from, and whether it did), so that a
re-run never trains a finished rung again.

Only `run` writes (`ResultStore(path)`), and only to a file that is the service's: the file
is marked with SQLite's `application_id` and its schema version with `user_version`, and a
database of another program is refused by name before anything touches it. `status`,
`report`, `recommend` and `export` open the file read-only (`ResultStore.open_read_only`):
they never create a database, change its schema or its journal mode, and they read one on
read-only media.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

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
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from sweep_service.spec import BASELINE, COMPLETED, PENDING, PRUNED, RUNNING, SKIPPED, STATUSES

# SQLite's `application_id` header field marks a file as a sweep-service database ("SwpS").
APPLICATION_ID = int.from_bytes(b"SwpS", "big")
# `user_version`: the schema this version writes. Raised with every schema change; `run`
# upgrades older files (columns and tables are only ever added) and refuses newer ones.
SCHEMA_VERSION = 2
# Files written before the marks existed (application_id 0) are the service's if they hold
# these tables with these columns.
_OWN_COLUMNS = {"sweeps": {"sweep_id", "config_json"}, "trials": {"sweep_id", "key", "spec_json"}}
_SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used as asked; the message names the file and what to do."""


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
    # Where the results came from besides the libraries (sweep_service.provenance): the
    # project's git commit and a hash of the data set's files, as of the latest run.
    provenance_json: Mapped[str | None] = mapped_column(Text, default="{}")
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
    rate: Mapped[float] = mapped_column(Float)  # requested: fraction in [0, 1); 0 for baselines
    seed: Mapped[int | None] = mapped_column(default=None)  # None in rows written before repeats
    status: Mapped[str] = mapped_column(String, default=PENDING)
    spec_json: Mapped[str] = mapped_column(Text)
    # Pruned trials: how the plugin's choice became what speedup removed (docs/pruning.md).
    grouping: Mapped[str | None] = mapped_column(String, default=None)  # "dependency" or "layer"
    allocation: Mapped[str | None] = mapped_column(String, default=None)  # "uniform" or "global"
    round_to: Mapped[int | None] = mapped_column(Integer, default=None)  # channels kept: a multiple of this

    accuracy: Mapped[float | None] = mapped_column(default=None)  # top-1, fraction, after fine-tuning
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
    worker_versions_json: Mapped[str | None] = mapped_column(Text, default=None)  # the worker's libraries
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    artifact_path: Mapped[str | None] = mapped_column(String, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    # Adaptive search (sweep_service.coordinator.search). budget: the share of the trial's
    # fine-tune its result trained (1.0: all of it; None: written before budgets were
    # recorded, so all of it); rung: which rung that was (1 the first, len(rungs) + 1 the
    # full fine-tune); stop_reason: why a completed trial stopped short, or a skipped one
    # did not run.
    budget: Mapped[float | None] = mapped_column(default=None)
    rung: Mapped[int | None] = mapped_column(default=None)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)


class RungRow(Base):
    """A pruned trial's result at an intermediate rung of an adaptive sweep, the checkpoint
    it can continue from, and the decision taken on it: `continue` (it trained on) or
    `stop` (its row keeps this result); None while undecided."""

    __tablename__ = "rungs"
    __table_args__ = (UniqueConstraint("sweep_id", "key", "budget", name="uq_rung_per_trial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.sweep_id"), index=True)
    key: Mapped[str] = mapped_column(String)
    rung: Mapped[int] = mapped_column(Integer)
    budget: Mapped[float] = mapped_column(Float)  # share of the fine-tune's steps trained
    accuracy: Mapped[float | None] = mapped_column(default=None)
    params_after: Mapped[int | None] = mapped_column(default=None)
    macs_after: Mapped[int | None] = mapped_column(default=None)
    checkpoint_path: Mapped[str | None] = mapped_column(String, default=None)
    decision: Mapped[str | None] = mapped_column(String, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=utcnow)


# A rung's decisions (coordinator.search): "stop-line" is a stop that also ends its trial's line.
RUNG_STOP, RUNG_STOP_LINE, RUNG_CONTINUE = "stop", "stop-line", "continue"


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
# What a variant's row carries of its trial's.
_TRIAL_OF_VARIANT = ("model", "kind", "pruner", "rate", "structure", "trial_status")

class SweepLockRow(Base):
    """Which coordinator runs a sweep (sweep_service.coordinator.lock): one row while it runs."""

    __tablename__ = "sweep_locks"

    sweep_id: Mapped[str] = mapped_column(String, primary_key=True)
    token: Mapped[str] = mapped_column(String)  # the holder's own id: it refreshes and releases only its lock
    host: Mapped[str] = mapped_column(String)
    pid: Mapped[int] = mapped_column(Integer)
    # The holder's start time (seconds since the epoch): a pid reused by another process is not the holder.
    pid_started: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()


# Result fields a worker may report; everything else in a row is the coordinator's.
RESULT_FIELDS = tuple(
    c.name
    for c in TrialRow.__table__.columns
    if c.name not in {"id", "sweep_id", "key", "kind", "model", "pruner", "rate", "seed", "spec_json", "grouping",
                      "allocation", "round_to", "attempts"}
)
VARIANT_FIELDS = ("format", "runtime", "path", "size_bytes", "compressed_bytes", "accuracy", "time_s", "error")
MEASUREMENT_FIELDS = tuple(c.name for c in MeasurementRow.__table__.columns if c.name not in {"id", "run_id"})


class ResultStore:
    """Thin repository over the SQLite file; every method is one short transaction.

    `ResultStore(path)` opens the file for `run`: it creates it, or checks that it is the
    service's, and brings its schema up to date. `ResultStore.open_read_only(path)` is for
    everything else. Both raise StoreError with a message for the user.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.engine = _open_for_reading(self.path) if read_only else _open_for_writing(self.path)
        try:
            schema = inspect(self.engine)
            self._columns = {name: {c["name"] for c in schema.get_columns(name)}
                             for name in schema.get_table_names()}
        except DBAPIError as exc:
            self.engine.dispose()
            raise StoreError(_problem(self.path, exc.orig)) from None

    @classmethod
    def open_read_only(cls, path: str | Path) -> "ResultStore":
        return cls(path, read_only=True)

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the file's connections (the last one to close folds SQLite's write-ahead
        log into the database file)."""
        self.engine.dispose()

    # reading, tolerant of an older file's schema (read-only commands do not upgrade it) --
    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection to read with; a file damaged past its header is a StoreError."""
        try:
            with self.engine.connect() as connection:
                yield connection
        except DBAPIError as exc:
            raise StoreError(_problem(self.path, exc.orig)) from None

    def _select(self, model: type[Base]):
        present = self._columns.get(model.__tablename__, set())
        return select(*[c for c in model.__table__.columns if c.name in present])

    @staticmethod
    def _as_dict(model: type[Base], row) -> dict[str, Any]:
        mapping = row._mapping
        return {c.name: mapping.get(c.name) for c in model.__table__.columns}

    def _has(self, model: type[Base]) -> bool:
        return model.__tablename__ in self._columns

    # sweeps ---------------------------------------------------------------
    def begin_sweep(self, *, sweep_id: str, name: str, config_json: str, dataset: str,
                    weights: str, versions: dict[str, str], provenance: dict[str, Any] | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            if row is None:
                row = SweepRow(sweep_id=sweep_id, name=name, dataset=dataset, weights=weights)
                s.add(row)
            row.config_json = config_json
            row.versions_json = json.dumps(versions, sort_keys=True)
            row.provenance_json = json.dumps(provenance or {}, sort_keys=True)
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
        sweep = self._sweep_row(sweep_id)
        return json.loads((sweep or {}).get("formats_json") or "{}")

    def set_format(self, sweep_id: str, model: str, fastest: str, timings: dict[str, float]) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            formats = json.loads(row.formats_json or "{}")
            formats[model] = {"format": fastest, "timings": timings}
            row.formats_json = json.dumps(formats, sort_keys=True)

    def _sweep_row(self, sweep_id: str) -> dict[str, Any] | None:
        if not self._has(SweepRow):
            return None
        with self._reading() as c:
            row = c.execute(self._select(SweepRow).where(SweepRow.sweep_id == sweep_id)).first()
        return None if row is None else self._as_dict(SweepRow, row)

    def sweep(self, sweep_id: str | None = None) -> dict[str, Any]:
        """The given sweep, or the most recently started one."""
        if sweep_id is not None:
            row = self._sweep_row(sweep_id)
            if row is None:
                known = [s["sweep_id"] for s in self.sweeps()]
                raise LookupError(f"no sweep {sweep_id!r} in {self.path}; known: {', '.join(known) or 'none'}")
            return row
        sweeps = self.sweeps()
        if not sweeps:
            raise LookupError(f"{self.path} holds no sweep yet")
        return max(sweeps, key=lambda s: s["started_at"] or datetime.min)

    def sweeps(self) -> list[dict[str, Any]]:
        if not self._has(SweepRow):
            return []
        with self._reading() as c:
            rows = c.execute(self._select(SweepRow).order_by(SweepRow.started_at)).all()
        return [self._as_dict(SweepRow, r) for r in rows]

    # trials ---------------------------------------------------------------
    def add_trials(self, sweep_id: str, specs: Iterable[Any]) -> int:
        """Insert a pending row for each spec not yet recorded; returns how many were new."""
        specs = list(specs)
        with Session(self.engine) as s, s.begin():
            known = set(s.scalars(select(TrialRow.key).where(TrialRow.sweep_id == sweep_id)))
            new = [spec for spec in specs if spec.key not in known]
            # Rows written before the seed had a column of its own get it from their spec.
            seeds = {spec.key: spec.seed for spec in specs}
            for row in s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.seed.is_(None))):
                row.seed = seeds.get(row.key, row.seed)
            for spec in new:
                pruned = spec.kind == PRUNED
                s.add(TrialRow(sweep_id=sweep_id, key=spec.key, kind=spec.kind, model=spec.model,
                               pruner=spec.pruner, rate=spec.rate, seed=spec.seed, status=PENDING,
                               spec_json=spec.to_json(), grouping=spec.grouping if pruned else None,
                               allocation=spec.allocation if pruned else None,
                               round_to=spec.round_to if pruned else None))
            return len(new)

    def reset_unfinished(self, sweep_id: str) -> int:
        """Trials left `running` by a coordinator that stopped go back to `pending`."""
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
            row.error = row.stop_reason = row.rung = None

    def record(self, sweep_id: str, key: str, result: dict[str, Any], *, add_times: bool = False) -> None:
        """Store a finished trial's result (status completed or failed). `add_times`: the
        result continues the row's earlier rung, so its phase times add to the row's."""
        unknown = set(result) - set(RESULT_FIELDS)
        if unknown:
            raise KeyError(f"unknown result fields {sorted(unknown)}")
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, key)
            for name, value in result.items():
                earlier = getattr(row, name)
                if add_times and name.startswith("time_") and value is not None and earlier is not None:
                    value += earlier
                setattr(row, name, value)
            row.finished_at = utcnow()

    # adaptive search ------------------------------------------------------
    def record_rung(self, sweep_id: str, key: str, rung: int, result: dict[str, Any], checkpoint_path: str,
                    *, add_times: bool) -> None:
        """A pruned trial's result at an intermediate rung: kept in `rungs`, and shown in its
        row, which stays pending until the search decides on it. `add_times`: it continued
        an earlier rung."""
        with Session(self.engine) as s, s.begin():
            s.add(RungRow(sweep_id=sweep_id, key=key, rung=rung, budget=result["budget"],
                          accuracy=result.get("accuracy"), params_after=result.get("params_after"),
                          macs_after=result.get("macs_after"),
                          checkpoint_path=checkpoint_path))
        self.record(sweep_id, key, {**result, "status": PENDING, "rung": rung, "stop_reason": None},
                    add_times=add_times)

    def decide_rung(self, sweep_id: str, key: str, budget: float, decision: str, reason: str | None = None) -> None:
        """Record the search's decision on a trial's latest rung; on `stop` or `stop-line`, the
        rung's result becomes the trial's: completed, with the reason it stopped short."""
        with Session(self.engine) as s, s.begin():
            rung = s.scalars(select(RungRow).where(RungRow.sweep_id == sweep_id, RungRow.key == key,
                                                   RungRow.budget == budget)).one()
            rung.decision, rung.reason = decision, reason
            if decision in (RUNG_STOP, RUNG_STOP_LINE):
                row = self._row(s, sweep_id, key)
                row.status, row.stop_reason = COMPLETED, reason

    def drop_checkpoints(self, sweep_id: str, key: str) -> list[str]:
        """Forget a trial's rung checkpoints (it has trained in full, or stopped); returns their paths."""
        with Session(self.engine) as s, s.begin():
            rungs = s.scalars(select(RungRow).where(RungRow.sweep_id == sweep_id, RungRow.key == key,
                                                    RungRow.checkpoint_path.is_not(None))).all()
            paths = [r.checkpoint_path for r in rungs]
            for r in rungs:
                r.checkpoint_path = None
            return paths

    def rungs(self, sweep_id: str) -> dict[str, list[dict[str, Any]]]:
        """Each trial's intermediate rungs, by key, in the order it trained them."""
        if not self._has(RungRow):
            return {}
        query = self._select(RungRow).where(RungRow.sweep_id == sweep_id).order_by(RungRow.key, RungRow.budget)
        with self._reading() as c:
            rows = c.execute(query).all()
        found: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            found.setdefault(r.key, []).append(self._as_dict(RungRow, r))
        return found

    def skip(self, sweep_id: str, key: str, reason: str) -> None:
        """Record that the search will not run this trial, and why."""
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, key)
            row.status, row.stop_reason = SKIPPED, reason

    def link_baselines(self, sweep_id: str) -> None:
        """Give each pruned trial its own baseline's accuracy (of its model and seed) and its
        accuracy drop."""
        with Session(self.engine) as s, s.begin():
            # A sweep has one baseline per (model, seed); rows from before repeats have no seed
            # and one baseline per model.
            baselines = {
                (row.model, row.seed): row.accuracy
                for row in s.scalars(select(TrialRow).where(
                    TrialRow.sweep_id == sweep_id, TrialRow.kind == BASELINE, TrialRow.status == COMPLETED))
            }
            for row in s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id,
                                                        TrialRow.kind == PRUNED)):
                row.baseline_accuracy = baselines.get((row.model, row.seed))
                row.accuracy_drop = (None if row.accuracy is None or row.baseline_accuracy is None
                                     else row.baseline_accuracy - row.accuracy)

    def trials(self, sweep_id: str, *, status: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        if not self._has(TrialRow):
            return []
        query = self._select(TrialRow).where(TrialRow.sweep_id == sweep_id)
        if status:
            query = query.where(TrialRow.status == status)
        if kind:
            query = query.where(TrialRow.kind == kind)
        with self._reading() as c:
            rows = c.execute(query.order_by(TrialRow.model, TrialRow.pruner, TrialRow.rate, TrialRow.seed)).all()
        return [self._as_dict(TrialRow, r) for r in rows]

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
        if not self._has(VariantRow):
            return []
        query = (self._select(VariantRow)
                 .add_columns(TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, TrialRow.structure,
                              TrialRow.status.label("trial_status"))
                 .join(TrialRow, _VARIANT_OF_TRIAL)
                 .where(VariantRow.sweep_id == sweep_id)
                 .order_by(TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, VariantRow.format))
        with self._reading() as c:
            rows = c.execute(query).all()
        return [{**self._as_dict(VariantRow, r), **{k: r._mapping[k] for k in _TRIAL_OF_VARIANT}} for r in rows]

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
        if not self._has(MeasurementRunRow):
            return []
        query = self._select(MeasurementRunRow).where(MeasurementRunRow.sweep_id == sweep_id).order_by(
            MeasurementRunRow.id)
        with self._reading() as c:
            return [self._as_dict(MeasurementRunRow, r) for r in c.execute(query).all()]

    def measurements(self, sweep_id: str, run_id: int | None = None) -> list[dict[str, Any]]:
        """The measurements of one run (default: the sweep's latest finished run), each with
        its variant's format and its trial's key, model, pruner, rate and kind."""
        if not self._has(MeasurementRow):
            return []
        with self._reading() as c:
            if run_id is None:
                run_id = c.execute(select(MeasurementRunRow.id).where(
                    MeasurementRunRow.sweep_id == sweep_id, MeasurementRunRow.status == "finished")
                    .order_by(MeasurementRunRow.id.desc())).scalars().first()
                if run_id is None:
                    return []
            query = (self._select(MeasurementRow)
                     .add_columns(VariantRow.format, VariantRow.runtime, TrialRow.key.label("trial_key"),
                                  TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, TrialRow.structure)
                     .join(VariantRow, VariantRow.id == MeasurementRow.variant_id)
                     .join(TrialRow, _VARIANT_OF_TRIAL)
                     .where(MeasurementRow.run_id == run_id)
                     .order_by(TrialRow.model, TrialRow.kind, TrialRow.pruner, TrialRow.rate, VariantRow.format,
                               MeasurementRow.batch_size))
            rows = c.execute(query).all()
        extra = ("format", "runtime", "trial_key", "model", "kind", "pruner", "rate", "structure")
        return [{**self._as_dict(MeasurementRow, r), **{k: r._mapping[k] for k in extra}} for r in rows]

    def set_latency(self, sweep_id: str, trial_key: str, latency_ms: float | None, source: str | None) -> None:
        with Session(self.engine) as s, s.begin():
            row = self._row(s, sweep_id, trial_key)
            row.latency_ms, row.latency_source = latency_ms, source

    @staticmethod
    def _row(s: Session, sweep_id: str, key: str) -> TrialRow:
        return s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.key == key)).one()

    # the sweep's lock (its policy is sweep_service.coordinator.lock) ---------------------
    def lock_holder(self, sweep_id: str) -> dict[str, Any] | None:
        """The lock row of `sweep_id`, or None if no coordinator holds it."""
        if not self._has(SweepLockRow):
            return None
        with self._reading() as c:
            row = c.execute(self._select(SweepLockRow).where(SweepLockRow.sweep_id == sweep_id)).first()
        return None if row is None else self._as_dict(SweepLockRow, row)

    def insert_lock(self, holder: dict[str, Any]) -> bool:
        """Take the lock of a sweep nobody holds; False if a row is there already."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(SweepLockRow).values(**holder))
        except IntegrityError:
            return False
        return True

    def replace_lock(self, sweep_id: str, old_token: str, holder: dict[str, Any]) -> bool:
        """Take over the lock from the holder `old_token`; False if it changed meanwhile."""
        with self.engine.begin() as c:
            done = c.execute(update(SweepLockRow).where(SweepLockRow.sweep_id == sweep_id,
                                                        SweepLockRow.token == old_token).values(**holder))
        return done.rowcount == 1

    def refresh_lock(self, sweep_id: str, token: str, at: datetime) -> bool:
        """The holder's heartbeat; False if the lock is no longer `token`'s."""
        with self.engine.begin() as c:
            done = c.execute(update(SweepLockRow).where(SweepLockRow.sweep_id == sweep_id,
                                                        SweepLockRow.token == token).values(heartbeat_at=at))
        return done.rowcount == 1

    def delete_lock(self, sweep_id: str, token: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(SweepLockRow).where(SweepLockRow.sweep_id == sweep_id, SweepLockRow.token == token))


# opening the file ---------------------------------------------------------------------------
def _open_for_writing(path: Path):
    """An engine for `run`: the file created, or checked to be ours and brought up to date."""
    if path.is_dir():
        raise StoreError(f"the database path {path} is a folder; give a file path, e.g. --db {path / 'sweep.db'}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder {folder} for the database {path}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write the database {path}: its folder {folder} is read-only (SQLite writes "
                         "its journal beside the database); choose a writable place with --db")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"cannot write the database {path}: the file is read-only; "
                             "choose another file with --db")
        _check_header(path)
    try:
        _, version = _inspect(path, f"{path.resolve().as_uri()}?mode=rwc", integrity=True)
    except sqlite3.OperationalError as exc:
        raise StoreError(_problem(path, exc)) from None
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer sweep-service (schema version {version}; this one "
                         f"writes {SCHEMA_VERSION}): run the sweep with that version, or pass another --db")
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _writer_pragmas)
    try:
        # Marked ours before any table is made: SQLite commits each CREATE TABLE on its own, and
        # another coordinator opening the file meanwhile would see some of our tables without
        # the mark, as another program's.
        with engine.begin() as c:
            c.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
        _create_or_upgrade(engine)
        with engine.begin() as c:
            c.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except DBAPIError as exc:
        engine.dispose()
        raise StoreError(_problem(path, exc.orig)) from None
    return engine


def _create_or_upgrade(engine) -> None:
    """Create the missing tables and columns. Another coordinator (of another sweep) may make
    the same table or column between our look and our change: then look again. Each such
    collision means the other made one of them, so there are at most as many as there are
    tables and columns."""
    tables = Base.metadata.tables.values()
    attempts = len(tables) + sum(len(table.columns) for table in tables)
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            _add_new_columns(engine)
            return
        except OperationalError as exc:
            if attempt == attempts - 1 or not any(text in str(exc.orig)
                                                  for text in ("already exists", "duplicate column")):
                raise


def _open_for_reading(path: Path):
    """An engine whose connections cannot write, on a file checked to be ours.

    Opened read-write with writes refused (`query_only`), the connection sees what a running
    coordinator has not yet folded into the file, and the last one to close leaves no
    journal files behind. Where the file or its folder cannot be written (read-only media)
    it is opened read-only, and where SQLite cannot even make its shared-memory index there,
    as immutable.
    """
    if path.is_dir():
        raise StoreError(f"the database path {path} is a folder; pass the database file, e.g. --db {path / 'sweep.db'}")
    if not path.is_file():
        raise StoreError(f"no results database at {path}; run a sweep first or pass --db")
    _check_header(path)
    base = path.resolve().as_uri()
    problem = None
    for uri in (f"{base}?mode=rw", f"{base}?mode=ro", f"{base}?mode=ro&immutable=1"):
        try:
            kind, _ = _inspect(path, uri)
        except sqlite3.OperationalError as exc:  # cannot open this way: try the next
            problem = exc
            continue
        if kind == "empty":
            raise StoreError(f"{path} holds no sweep yet")
        engine = create_engine("sqlite://", creator=lambda uri=uri: _read_only_connection(uri), poolclass=NullPool)
        if uri.endswith("immutable=1") and Path(f"{path}-wal").is_file() and Path(f"{path}-wal").stat().st_size:
            print(f"warning: {path} is read without its write-ahead log {path}-wal (read-only media): "
                  "the latest results may be missing", file=sys.stderr)
        return engine
    raise StoreError(_problem(path, problem))


def _read_only_connection(uri: str) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    connection.execute("PRAGMA query_only = 1")
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite or is marked as another application's, from its
    header alone (before SQLite opens it)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    if not header:
        return  # an empty file: SQLite makes it a new database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{path} is not an SQLite database (damaged, or another kind of file); "
                         "pass --db with a sweep's results database, or a new path")
    application_id = int.from_bytes(header[68:72], "big", signed=True)
    if application_id not in (0, APPLICATION_ID):
        raise StoreError(f"{path} is another application's SQLite database (application_id {application_id:#x}), "
                         "not a sweep-service results database; pass another --db")


def _inspect(path: Path, uri: str, *, integrity: bool = False) -> tuple[str, int]:
    """("ours" | "empty", schema version) of the database at `uri`, without changing it.
    Raises StoreError for a database of another program or a damaged one, and
    sqlite3.OperationalError if SQLite cannot open it this way."""
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        connection.execute("PRAGMA query_only = 1")
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                      "AND name NOT LIKE 'sqlite_%'")]
            tables = {n: {r[1] for r in connection.execute(f'PRAGMA table_info("{n}")')} for n in names}
            damaged = integrity and tables and connection.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok"
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise
            raise StoreError(_problem(path, exc)) from None
    finally:
        connection.close()
    if damaged:
        raise StoreError(f"the database {path} is damaged (SQLite's quick_check failed); restore a copy "
                         "or pass another --db")
    if application_id == APPLICATION_ID:
        return "ours", version
    if application_id != 0:
        raise StoreError(f"{path} is another application's SQLite database (application_id {application_id:#x}), "
                         "not a sweep-service results database; pass another --db")
    if not tables:
        return "empty", version
    if all(name in tables and columns <= tables[name] for name, columns in _OWN_COLUMNS.items()):
        return "ours", version  # written before the file was marked
    raise StoreError(f"{path} is not a sweep-service results database: it holds another program's tables "
                     f"({', '.join(sorted(tables))}); pass another --db")


def _problem(path: Path, exc: BaseException | None) -> str:
    """What an SQLite error means for the user, naming the file."""
    message = str(exc) if exc else "unknown error"
    meanings = {
        "file is not a database": f"{path} is not an SQLite database (damaged, or another kind of file)",
        "malformed": f"the database {path} is damaged ({message}); restore a copy or pass another --db",
        "readonly": f"cannot write the database {path}: {message}; choose a writable place with --db",
        "disk is full": f"cannot write the database {path}: the disk is full",
        "locked": f"the database {path} is locked by another program ({message}); try again later",
        "unable to open": f"cannot open the database {path} ({message}); check that it and its folder "
                          "can be read",
    }
    return next((text for key, text in meanings.items() if key in message), f"the database {path}: {message}")


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


def _writer_pragmas(dbapi_connection, _record) -> None:
    # WAL lets `status` and `report` read while the coordinator writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()
