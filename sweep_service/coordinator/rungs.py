"""The coordinator's side of an adaptive search: the search rebuilt from the database, rung
checkpoints kept on disk, and each rung result and decision recorded as it comes.

A rung checkpoint comes back from its worker through Ray, is written to
`output_dir/checkpoints/`, and goes out again through Ray to whichever worker continues the
trial. It is deleted once the trial has trained in full or stopped (a stop is final; a later
`search: grid` run trains the trial again from the start).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep_service.coordinator.config import SweepConfig
from sweep_service.coordinator.search import ADD, CONTINUE, SKIP, STOP, STOP_LINE, AdaptiveSearch, Decision, RungRun
from sweep_service.coordinator.store import ResultStore
from sweep_service.dataset_info import test_set_size
from sweep_service.files import write_atomic
from sweep_service.spec import COMPLETED, TrialSpec


def build_search(config: SweepConfig, specs: list[TrialSpec], store: ResultStore, sweep_id: str,
                 rows: dict[str, dict[str, Any]]) -> AdaptiveSearch:
    """The sweep's adaptive search, knowing everything earlier runs recorded (a rung whose
    checkpoint file is gone can still be compared, but not continued)."""
    history = store.rungs(sweep_id)
    for records in history.values():
        for record in records:
            if record["checkpoint_path"] and not Path(record["checkpoint_path"]).is_file():
                record["checkpoint_path"] = None
    return AdaptiveSearch(specs, config.adaptive, test_set_size(config.dataset, config.test_subset),
                          rows=rows, rungs=history)


class RungKeeper:
    """Records an adaptive sweep's rung results and decisions, and keeps its checkpoints."""

    def __init__(self, store: ResultStore, sweep_id: str, output_dir: Path):
        self.store = store
        self.sweep_id = sweep_id
        self.folder = output_dir / "checkpoints"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.latest: dict[str, Path] = {}  # trial key -> its latest rung checkpoint on disk
        for key, records in store.rungs(sweep_id).items():
            for record in records:
                if record["checkpoint_path"] and Path(record["checkpoint_path"]).is_file():
                    self.latest[key] = Path(record["checkpoint_path"])

    def resume_from(self, task: RungRun) -> bytes | None:
        """The checkpoint bytes a task continues from (None: it starts by pruning)."""
        return self.latest[task.key].read_bytes() if task.start > 0 else None

    def record(self, task: RungRun, result: dict[str, Any], checkpoint: bytes | None) -> bool:
        """Record a rung task's result; True if it stopped short of the full fine-tune (the
        trial then waits for the search's decision)."""
        spec, continued = task.spec, task.start > 0
        if result["status"] == COMPLETED and checkpoint is not None:
            path = self.folder / f"{spec.model}-{spec.pruner}-{spec.rate:.4g}-{spec.key}-{result['budget']:.4f}.pt"
            write_atomic(path, checkpoint)
            self.latest[task.key] = path
            self.store.record_rung(self.sweep_id, task.key, task.rung, result, str(path), add_times=continued)
            return True
        if result["status"] == COMPLETED:
            result["rung"] = task.rung
            self._drop_checkpoints(task.key)
        self.store.record(self.sweep_id, task.key, result, add_times=continued)
        return False

    def _drop_checkpoints(self, key: str) -> None:
        for path in self.store.drop_checkpoints(self.sweep_id, key):
            Path(path).unlink(missing_ok=True)
        self.latest.pop(key, None)

    def apply(self, decision: Decision) -> str | None:
        """Record a decision; returns its log line (None for a trial an earlier run added)."""
        spec = decision.spec
        if decision.action == STOP:
            self.store.decide_rung(self.sweep_id, spec.key, decision.budget, STOP_LINE if decision.ends_line else STOP,
                                   decision.reason)
            self._drop_checkpoints(spec.key)
            return f"stop   {spec.label} at {decision.budget:.0%}: {decision.reason}"
        if decision.action == CONTINUE:
            self.store.decide_rung(self.sweep_id, spec.key, decision.budget, CONTINUE)
            return f"go on  {spec.label} from {decision.budget:.0%}: it may reach the front"
        if decision.action == SKIP:
            self.store.skip(self.sweep_id, spec.key, decision.reason)
            return f"skip   {spec.label}: {decision.reason}"
        if decision.action == ADD:
            new = self.store.add_trials(self.sweep_id, [spec])
            return f"add    {spec.label}: {decision.reason}" if new else None
        raise ValueError(f"unknown decision {decision.action!r}")
