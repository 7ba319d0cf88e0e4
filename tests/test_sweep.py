"""A whole sweep through the CLI on a local Ray cluster, then a resume, then a worker
that dies mid-trial and one killed under a baseline. Real NNI pruning and speedup, real
SQLite, the real CIFAR-10 reader on generated files."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
import torch

from sweep_service.worker.compute import candidates
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def _rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute("SELECT * FROM trials")]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, data_root):
    import yaml

    folder = tmp_path_factory.mktemp("sweep")
    config = dict(
        name="tiny", models=["resnet18"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6],
        dataset="synthetic", data_root=str(data_root), weights="none", baseline_epochs=2,
        finetune_epochs=1, batch_size=64, train_subset=1000, test_subset=500,
        optimizer={"lr": 0.05}, database=str(folder / "tiny.db"), output_dir=str(folder / "out"),
    )
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return path, config, result


def test_every_trial_completes_with_its_figures(finished_sweep):
    _, config, result = finished_sweep
    rows = _rows(Path(config["database"]))
    assert len(rows) == 1 + 2 * 2
    assert {r["status"] for r in rows} == {"completed"}, [r["error"] for r in rows]
    for row in rows:
        assert row["params_after"] <= row["params_before"]
        assert row["macs_after"] <= row["macs_before"]
        assert row["model_size_bytes"] > 0 and row["latency_ms"] > 0
        assert row["worker_host"] and row["time_finetune_s"] > 0
        assert Path(row["artifact_path"]).is_file()
    assert "5 completed" in result.stdout
    assert {r["compute"] for r in rows} == {"fp32"}  # the default: one fixed format


def test_auto_compute_measures_each_model_once_and_trains_all_its_trials_alike(tiny_config):
    path, config = tiny_config(name="auto", models=["resnet18", "mobilenet_v2"], pruners=["l1norm"],
                               rates=[0.3, 0.6], compute="auto", baseline_epochs=1, train_subset=300,
                               test_subset=200)
    result = run_cli("run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(Path(config["database"]))
    con = sqlite3.connect(config["database"])
    formats = json.loads(con.execute("SELECT formats_json FROM sweeps").fetchone()[0])
    assert set(formats) == {"resnet18", "mobilenet_v2"}
    for model, measured in formats.items():
        assert set(measured["timings"]) == {c.name for c in candidates(torch.device("cpu"))}
        assert measured["format"] == min(measured["timings"], key=measured["timings"].get)
        assert {r["compute"] for r in rows if r["model"] == model} == {measured["format"]}
        assert f"probed {model} " in result.stdout
    # resumed, the sweep keeps the formats it measured: nothing is measured again
    again = run_cli("run", str(path))
    assert "probed" not in again.stdout and "6 already done, 0 to run" in again.stdout


def test_baseline_beats_chance_and_reduction_grows_with_rate(finished_sweep):
    _, config, _ = finished_sweep
    rows = _rows(Path(config["database"]))
    baseline = next(r for r in rows if r["kind"] == "baseline")
    assert baseline["accuracy"] > 0.3  # 10 classes: chance is 0.1
    by_pruner = defaultdict(list)
    for row in rows:
        if row["kind"] == "pruned":
            by_pruner[row["pruner"]].append((row["rate"], row["param_reduction"]))
            assert row["accuracy_drop"] == pytest.approx(baseline["accuracy"] - row["accuracy"])
    for pruner, points in by_pruner.items():
        reductions = [reduction for _, reduction in sorted(points)]
        assert reductions == sorted(reductions) and reductions[0] > 0, pruner


def test_charts_are_written_from_the_database(finished_sweep):
    _, config, _ = finished_sweep
    report = Path(config["output_dir"]) / "report"
    pngs = list(report.glob("*.png"))
    assert (report / "index.html").is_file() and len(pngs) >= 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_rerun_resumes_without_running_completed_trials(finished_sweep):
    path, config, _ = finished_sweep
    before = {r["key"]: (r["started_at"], r["attempts"]) for r in _rows(Path(config["database"]))}
    result = run_cli("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "5 already done, 0 to run" in result.stdout
    after = {r["key"]: (r["started_at"], r["attempts"]) for r in _rows(Path(config["database"]))}
    assert after == before


KILLER_PLUGIN = '''
import os
from pathlib import Path
from sweep_service.nni_adapter import NNIPruner

class DiesOnce(NNIPruner):
    """Kills its worker process the first time it runs, then behaves like L1Norm."""
    name = "dies-once"
    description = "test plugin: the worker dies on the first attempt"
    nni_pruner = "L1NormPruner"

    def masks(self, model, rate, layers, data):
        marker = Path(os.environ["DIES_ONCE_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return super().masks(model, rate, layers, data)
'''


def test_trial_whose_worker_dies_is_retried(tiny_config, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dies_once.py").write_text(KILLER_PLUGIN)
    path, config = tiny_config(name="dies", pruners=["dies-once"], rates=[0.5], baseline_epochs=1,
                               train_subset=300, test_subset=200)
    marker = tmp_path / "died"
    result = run_cli("run", str(path), env={"SWEEP_PLUGINS_DIR": str(plugins), "DIES_ONCE_MARKER": str(marker)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.read_text() == "died"
    rows = _rows(Path(config["database"]))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}


def test_trials_of_a_failed_baseline_are_recorded_as_failed_without_running(tiny_config):
    """The baseline's worker is killed (as the OOM killer would) with no retry left: its
    pruned trials, which start from its checkpoint, fail with the reason, unrun."""
    path, config = tiny_config(name="lost", pruners=["l1norm"], rates=[0.5], baseline_epochs=20,
                               max_retries=0)
    sweep = subprocess.Popen([sys.executable, "-m", "sweep_service", "run", str(path)], cwd=REPO,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        baseline_worker = _worker_running_a_trial(psutil.Process(sweep.pid), within_s=120)
        baseline_worker.kill()
        out, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, out + err  # failed trials are results, not errors
    rows = {r["kind"]: r for r in _rows(Path(config["database"]))}
    assert rows["baseline"]["status"] == "failed" and "worker lost" in rows["baseline"]["error"]
    pruned = rows["pruned"]
    assert pruned["status"] == "failed" and pruned["error"] == "baseline of resnet18 failed; trial not run"
    assert pruned["attempts"] == 0 and pruned["started_at"] is None
    assert "2 failed" in out


def _worker_running_a_trial(coordinator: psutil.Process, within_s: float) -> psutil.Process:
    """The Ray worker process of the coordinator's cluster that runs a trial, once one does
    (Ray titles a worker process after the task it runs)."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        for process in coordinator.children(recursive=True):
            try:
                if process.cmdline()[:1] == ["ray::run_on_worker"]:
                    return process
            except psutil.Error:
                pass
        time.sleep(0.2)
    raise AssertionError("no Ray worker started a trial")


def test_local_ray_cluster_gives_trial_processes_their_setup(monkeypatch):
    """Through Ray's runtime environment alone, the local cluster's worker processes run on
    tcmalloc where the machine has it (sweep_service.worker.heap), import what trials need as they
    start (the setup hook), and find the plugins folder; stopping it leaves no process."""
    from sweep_service.coordinator.cluster import NO_TRIAL_RUNTIME_ENV, start_ray
    from sweep_service.worker import heap
    from sweep_service.worker.progress import TrialPhases

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = set(psutil.Process().children(recursive=True))
    ray = start_ray()
    try:
        @ray.remote(num_cpus=1)
        def worker_state() -> tuple:
            import sys

            imported = [m for m in ("torchvision.models", "nni.compression.speedup", "sweep_service.worker.trial")
                        if m in sys.modules]
            return heap.allocator(), imported, os.environ.get("SWEEP_PLUGINS_DIR"), os.getpid()

        allocator, imported, plugins, trial_pid = ray.get(worker_state.remote())
        assert allocator == ("tcmalloc" if heap.allocator_env({}) else "glibc")
        assert imported == ["torchvision.models", "nni.compression.speedup", "sweep_service.worker.trial"]
        assert plugins == str(REPO / "pruner_plugins")
        assert heap.allocator() != "tcmalloc"  # the coordinator keeps its own allocator

        # The progress actor runs no trial: its process maps no torch library.
        phases = ray.remote(TrialPhases).options(num_cpus=0, runtime_env=NO_TRIAL_RUNTIME_ENV).remote()
        assert ray.get(phases.phase.remote("t")) is None
        actor = next(p for p in psutil.Process().children(recursive=True)
                     if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::TrialPhases"))
        assert "libtorch" not in Path(f"/proc/{actor.pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{trial_pid}/maps").read_text()
        assert actor.memory_info().rss < psutil.Process(trial_pid).memory_info().rss / 2
        cluster = [p for p in psutil.Process().children(recursive=True) if p not in before]
    finally:
        ray.shutdown()
    _, alive = psutil.wait_procs(cluster, timeout=10)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
