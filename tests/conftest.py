"""Shared fixtures: a synthetic CIFAR-10-format data set made once per test session,
small sweep configs pointing into tmp folders, zoo models as after training, and the
smoke config run with three seeds on a fresh clone of the project."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    from sweep_service.worker import data

    root = tmp_path_factory.mktemp("data")
    data.prepare("synthetic", root)
    return root


@pytest.fixture
def tiny_config(tmp_path, data_root):
    """Write a small valid sweep config and return (path, dict); tests tweak the dict."""

    def make(**changes):
        config = dict(
            name="tiny", models=["resnet18"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6],
            dataset="synthetic", data_root=str(data_root), weights="none", image_size=32,
            baseline_epochs=2, finetune_epochs=1, batch_size=64, train_subset=1000,
            test_subset=500, optimizer={"lr": 0.05},
            database=str(tmp_path / "results" / "tiny.db"), output_dir=str(tmp_path / "results" / "tiny"),
        )
        config.update(changes)
        path = tmp_path / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path, config

    return make


def run_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m sweep_service ARGS` as a user would."""
    return subprocess.run([sys.executable, "-m", "sweep_service", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def fresh_clone(dest: Path) -> Path:
    """The project as a newcomer's `git clone` has it: the files git tracks (and new ones it
    would), committed in a repository of their own; no data, results or virtualenv."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not in a clone either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], check=True)
    return dest


def run_in(clone: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run `python -m sweep_service ARGS` in `clone`, on the clone's own code and plugins."""
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_PLUGINS_DIR", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "sweep_service", *args], cwd=clone, text=True, capture_output=True,
                          timeout=timeout, env={**env, "PYTHONPATH": str(clone)})


@pytest.fixture(scope="session")
def smoke_three_seeds(tmp_path_factory) -> dict:
    """configs/smoke.yaml with three seeds (`--repeats 3`), run on a fresh clone as its
    README says: data generated, results and report in the clone's results/."""
    clone = fresh_clone(tmp_path_factory.mktemp("clone"))
    started = time.perf_counter()
    result = run_in(clone, "run", "configs/smoke.yaml", "--repeats", "3")
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    return dict(clone=clone, db=clone / "results" / "smoke.db", report=clone / "results" / "smoke" / "report",
                stdout=result.stdout, seconds=seconds, commit=commit)


@pytest.fixture
def mount_point(tmp_path):
    """A fresh tmpfs (2 MB) at a folder of `tmp_path`; `remount_read_only()` makes it
    read-only, as a `:ro` volume or read-only media are. Skipped with the reason where
    this process may not mount (it needs root, or CAP_SYS_ADMIN)."""
    folder = tmp_path / "mnt"
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")

    class Mount:
        path = folder

        @staticmethod
        def remount_read_only() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    try:
        yield Mount
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def trained_like(name: str):
    """A zoo model whose batch norms hold statistics and affine parameters away from their
    initial values, as after training. Freshly initialised ones output zero for a zeroed
    channel, so a channel kept where it should have gone would not show."""
    import torch
    from torch import nn

    from model_zoo import create_model

    torch.manual_seed(0)
    model = create_model(name, weights="none").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model


@pytest.fixture
def one_torch_thread():
    """As `plugins check` and one-CPU trials run: tiny models gain nothing from threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
