"""Pruner plugins: the contract, discovery (folder and entry points), `plugins list|check`,
the README tutorial's steps, and every way a plugin can fail a trial."""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from model_zoo import create_model
from sweep_service.cli import main
from sweep_service.coordinator.config import (
    ConfigError,
    LayerSelection,
    load_config,
    parse_config,
)
from sweep_service.coordinator.grid import expand
from sweep_service.plugin_cli import CHECKS, FAIL, PASS, WARN, check_plugin
from sweep_service.plugins import (
    DEFAULT_PLUGINS_DIR,
    PluginError,
    filter_masks_from_scores,
    get_plugin,
    load_plugins,
)
from sweep_service.spec import COMPLETED, FAILED, PRUNED
from sweep_service.worker.pruning import check_masks, select_layers
from tests.conftest import REPO, run_cli

FIXTURES = Path(__file__).parent / "plugin_fixtures"
BAD_PLUGINS = FIXTURES / "bad"
TUTORIAL_PLUGIN, TUTORIAL_FILE = "taylor", DEFAULT_PLUGINS_DIR / "taylor.py"
TUTORIAL_CONFIG = REPO / "configs" / "plugin-tutorial.yaml"
BUILT_INS = {"l1norm", "l2norm", "fpgm", "nni-taylor", "random", TUTORIAL_PLUGIN}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# the contract's helper -------------------------------------------------------------------
def test_filter_masks_from_scores_masks_the_lowest_filters_of_each_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 3, bias=False), nn.Linear(4, 3))
    scores = {"0": torch.tensor([5.0, 1, 7, 0, 3, 9, 2, 8]), "1": torch.arange(5.0), "2": torch.ones(3)}
    masks = filter_masks_from_scores(model, ["0", "1", "2"], scores, 0.5)
    assert masks["0"]["weight"].shape == (8, 3, 3, 3) and masks["0"]["bias"].tolist() == [1, 0, 1, 0, 0, 1, 0, 1]
    assert (masks["0"]["weight"].flatten(1).amax(1) == masks["0"]["bias"]).all()  # whole filters
    assert masks["1"]["weight"].flatten(1)[:, 0].tolist() == [0, 0, 1, 1, 1] and "bias" not in masks["1"]
    assert masks["2"]["weight"].sum() == 2 * 4  # int(0.5 * 3) = 1 of 3 rows
    keeps_one = filter_masks_from_scores(model, ["1"], scores, 0.99)
    assert keeps_one["1"]["weight"].flatten(1)[:, 0].tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="5 scores for 8 output filters"):
        filter_masks_from_scores(model, ["0"], {"0": torch.ones(5)}, 0.5)


def test_random_baseline_is_seeded_by_the_trial_seed():
    model = create_model("resnet18").eval()
    layers = select_layers(model, "resnet18", LayerSelection().model_dump())
    plugin = load_plugins()["random"].create()

    def masks(seed):
        torch.manual_seed(seed)  # as run_trial does with the config's seed
        return plugin.masks(copy.deepcopy(model), 0.5, layers, None)

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(first[n]["weight"], again[n]["weight"]) for n in layers)
    assert any(not torch.equal(first[n]["weight"], other[n]["weight"]) for n in layers)
    assert check_masks(model, first, layers, 0.5) == pytest.approx(0.5, abs=0.01)


# the other plugins of the folder, the way `plugins check` runs them -----------------------
# (l1norm, l2norm and fpgm are pruned and sped up in test_pruning.py, taylor below)
@pytest.mark.parametrize("name", ["nni-taylor", "random"])
def test_builtin_plugin_passes_check(name):
    results = check_plugin(load_plugins()[name], ["resnet18"], [0.5])
    assert [r.check for r in results] == ["runs", "fit", "rate", "structure", "speedup", "grouped"]
    assert [r.status for r in results] == [PASS] * 6, [r.line() for r in results]
    assert "filter-structured" in results[3].detail
    assert re.search(r"params 11\.18M -> \d+\.\d+M \(-[3-6]\d\.\d%\)", results[4].detail), results[4].detail
    # by group, resnet18's first stage is blocked by the stem; the others lose half their channels
    grouped = results[5].detail
    assert re.search(r"^11 channel groups pruned \(1 blocked\); 4[5-9]\.\d% of the selected filters removed; "
                     r"sped-up = masked model \(largest logit difference \de-0\d\)$", grouped), grouped


# the README tutorial, step by step --------------------------------------------------------
def test_tutorial_plugin_is_small_and_is_the_one_the_readme_shows():
    source = TUTORIAL_FILE.read_text()
    assert len(source.splitlines()) <= 40 and "needs_data = True" in source
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert source in blocks, "README's plugin tutorial must show pruner_plugins/taylor.py verbatim"


def test_tutorial_step_list_shows_the_plugin_beside_the_built_ins():
    proc = run_cli("plugins", "list")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert BUILT_INS <= set(rows), proc.stdout
    tutorial = rows[TUTORIAL_PLUGIN]
    assert re.search(r"taylor\s+yes\s+scores\s+pruner_plugins/taylor\.py\s+First-order Taylor", tutorial), tutorial
    assert re.search(r"l1norm\s+-\s+scores\s+pruner_plugins/nni_norm\.py\s+The criterion of NNI's L1NormPruner",
                     rows["l1norm"])
    assert re.search(r"nni-taylor\s+yes\s+masks\s+pruner_plugins/nni_extra\.py\s+NNI TaylorPruner", rows["nni-taylor"])
    assert "entry points in the group 'sweep_service.pruners'" in proc.stdout


def test_tutorial_step_check_passes_on_resnet18_and_mobilenet_v2():
    proc = run_cli("plugins", "check", TUTORIAL_PLUGIN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line[:4] in (PASS, FAIL, WARN, "SKIP")]
    # 2 models x 2 rates x 6 checks, one line each, all passing
    assert len(lines) == 24 and all(line.startswith(PASS) for line in lines), proc.stdout
    for model in ("resnet18", "mobilenet_v2"):
        for check in CHECKS:
            assert re.search(rf"PASS  {model}\s+(30|70)%  {check}\s", proc.stdout), (model, check)
    assert re.search(r"masks remove 69\.\d% of the selected layers' weights in whole filters, requested 70%",
                     proc.stdout)
    assert "taylor: all 24 checks passed" in proc.stdout
    assert re.search(r"PASS  mobilenet_v2\s+70%  grouped    24 channel groups pruned \(0 blocked\); 70\.0% of",
                     proc.stdout)
    assert "Update indirect mask" not in proc.stdout + proc.stderr  # NNI's per-node log stays quiet


@pytest.mark.slow  # Ray and three trials: ~40 s on 2 cores
def test_tutorial_step_sweep_records_the_plugin_beside_l1norm(tmp_path, data_root):
    config = yaml.safe_load(TUTORIAL_CONFIG.read_text())
    assert TUTORIAL_PLUGIN in config["pruners"] and "l1norm" in config["pruners"]
    config.update(data_root=str(data_root), database=str(tmp_path / "tutorial.db"),
                  output_dir=str(tmp_path / "out"))
    path = tmp_path / "plugin-tutorial.yaml"
    path.write_text(yaml.safe_dump(config))

    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from sweep_service.coordinator.store import ResultStore

    store = ResultStore.open_read_only(tmp_path / "tutorial.db")
    rows = store.trials(store.sweep()["sweep_id"], kind=PRUNED)
    by_pruner = {row["pruner"]: row for row in rows}
    assert set(by_pruner) == {TUTORIAL_PLUGIN, "l1norm"}
    for pruner, row in by_pruner.items():
        assert row["status"] == COMPLETED, (pruner, row["error"])
        # half the filters of each group (the first stage is blocked): in and out channels
        # both shrink, so about three quarters of the parameters go
        assert row["accuracy"] is not None and 0.45 < row["channel_sparsity"] <= 0.5, row
        assert 0.6 < row["param_reduction"] < 0.8 and row["grouping"] == "dependency", row
    report = tmp_path / "out" / "report"
    page = (report / "index.html").read_text()
    assert TUTORIAL_PLUGIN in page and "l1norm" in page
    # the per-model chart draws a line per pruner: the plugin beside l1norm
    assert (report / "model_resnet18.png").is_file() and (report / "accuracy_vs_rate.png").is_file()


def test_tutorial_plugin_completes_a_trial(tmp_path, data_root):
    """The trial path on its own (no Ray): calibration data, masks, speedup, fine-tuning."""
    from sweep_service.worker.trial import run_trial

    config = parse_config(dict(
        name="taylor-trial", models=["resnet18"], pruners=[TUTORIAL_PLUGIN], rates=[0.5],
        dataset="synthetic", data_root=str(data_root), weights="none", prune_from="pretrained",
        finetune_epochs=1, batch_size=64, train_subset=128, test_subset=64, calibration_batches=2,
        database=str(tmp_path / "r.db"), output_dir=str(tmp_path / "out")))
    spec = next(s for s in expand(config) if s.kind == PRUNED)
    result = run_trial(spec).result
    assert result["status"] == COMPLETED, result.get("error")
    assert 0.45 < result["channel_sparsity"] <= 0.5 and 0.6 < result["param_reduction"] < 0.8


# failures: each recorded with its reason, the sweep goes on --------------------------------
@pytest.fixture
def bad_plugin_specs(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("SWEEP_PLUGINS_DIR", str(BAD_PLUGINS))  # the config validator's folder
    config = parse_config(dict(
        name="bad-plugins", models=["resnet18"],
        pruners=["raises", "wrong-shape", "ignores-rate", "unstructured", "wrong-scores"],
        rates=[0.5], dataset="synthetic", data_root=str(data_root), weights="none",
        prune_from="pretrained", train_subset=64, test_subset=64,
        database=str(tmp_path / "r.db"), output_dir=str(tmp_path / "out")))
    return {s.pruner: s for s in expand(config) if s.kind == PRUNED}


@pytest.mark.parametrize("pruner, reason", [
    ("raises", r"^prune failed: RuntimeError: importance scores diverged"),
    ("wrong-shape", r"^prune failed: MaskError: mask for layer1\.0\.conv1\.weight has shape \(64,\), "
                    r"the parameter has \(64, 64, 3, 3\)"),
    ("ignores-rate", r"^prune failed: MaskError: masks remove 0\.\d% of the selected layers' weights but "
                     r"the rate is 50% .*does not honour the rate"),
    ("unstructured", r"^prune failed: MaskError: no whole output filter is masked"),
    ("wrong-scores", r"^prune failed: ScoreError: scores for layer1\.0\.conv1: 32 values for 64 output filters"),
])
def test_a_broken_plugin_fails_its_trial_with_the_reason(bad_plugin_specs, pruner, reason):
    from sweep_service.worker.trial import run_trial

    result = run_trial(bad_plugin_specs[pruner], plugins_dir=str(BAD_PLUGINS)).result
    assert result["status"] == FAILED
    assert re.search(reason, result["error"]), result["error"]


@pytest.mark.parametrize("pruner, failing, reason, summary", [
    ("raises", "runs", "masks() raised RuntimeError: importance scores diverged", "1 of 6 checks FAILED (runs)"),
    ("wrong-shape", "fit", "has shape (64,), the parameter has (64, 64, 3, 3)", "1 of 6 checks FAILED (fit)"),
    ("wrong-scores", "fit", "scores for layer1.0.conv1: 32 values for 64 output filters", "1 of 6 checks FAILED (fit)"),
    ("ignores-rate", "rate", "requested 50%", "1 of 6 checks FAILED (rate)"),
    # unstructured masks remove no whole filter, so they miss the rate as well
    ("unstructured", "structure", "a trial would measure the unpruned model",
     "2 of 6 checks FAILED (rate, structure)"),
])
def test_check_reports_the_failing_check(capsys, pruner, failing, reason, summary):
    code = main(["plugins", "check", pruner, "--plugins-dir", str(BAD_PLUGINS), "--models", "resnet18",
                 "--rates", "0.5"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(line for line in out.splitlines() if re.match(rf"\w+  resnet18\s+50%  {failing}\s", line))
    assert line.startswith(FAIL) and reason in line, out
    assert f"{pruner}: {summary}" in out


def test_duplicate_names_are_an_error_naming_both_files(capsys):
    folder = FIXTURES / "duplicate"
    with pytest.raises(PluginError) as info:
        load_plugins(folder)
    message = str(info.value)
    assert "two pruner plugins are named 'twin'" in message
    assert str(folder / "first.py") in message and str(folder / "second.py") in message
    assert main(["plugins", "list", "--plugins-dir", str(folder)]) == 2
    assert "first.py" in capsys.readouterr().err


@pytest.mark.parametrize("attributes, problem", [
    ('name = "my pruner"\n    description = "x"', "`name` must be a string of letters, digits"),
    ('name = "none"\n    description = "x"', "the name 'none' is reserved"),
    ('name = "mine"', "`description` must be a one-line string"),
    ('name = "mine"\n    description = "x"\n    needs_data = "yes"', "`needs_data` must be True or False"),
])
def test_invalid_plugin_attributes_are_an_error_naming_the_file(tmp_path, attributes, problem):
    (tmp_path / "mine.py").write_text(
        "from sweep_service.plugins import PrunerPlugin\n\n\nclass Mine(PrunerPlugin):\n"
        f"    {attributes}\n\n    def masks(self, model, rate, layers, data):\n        return {{}}\n")
    plugins = load_plugins(tmp_path)
    assert "mine" not in plugins
    assert plugins.broken[str(tmp_path / "mine.py")].startswith(f"pruner plugin Mine in {tmp_path / 'mine.py'}: ")
    assert problem in plugins.broken[str(tmp_path / "mine.py")]
    with pytest.raises(PluginError, match=re.escape("unknown pruner(s) ['mine']; known pruners: ")) as info:
        get_plugin("mine", tmp_path)
    assert problem in str(info.value)  # the file that may define it, and why it did not load


def test_a_plugin_file_that_fails_to_import_is_named_and_blocks_only_its_own_plugins(tmp_path):
    (tmp_path / "broken.py").write_text("import numpy_but_misspelt\n")
    (tmp_path / "fine.py").write_text(
        "from sweep_service.plugins import PrunerPlugin\n\n\nclass Fine(PrunerPlugin):\n"
        "    name = 'fine'\n    description = 'x'\n\n    def masks(self, model, rate, layers, data):\n"
        "        return {}\n")
    plugins = load_plugins(tmp_path)
    assert "fine" in plugins
    assert plugins.broken == {str(tmp_path / "broken.py"): f"plugin file {tmp_path / 'broken.py'} failed to import: "
                                                           "ModuleNotFoundError: No module named 'numpy_but_misspelt'"}


def test_unknown_pruner_in_config_is_rejected_listing_known_ones(tiny_config, capsys):
    path, _ = tiny_config(pruners=["l1norm", "shapley"])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "pruners: unknown pruner(s) ['shapley']; known pruners: " in message
    known = message.split("known pruners: ")[1]
    assert all(name in known for name in BUILT_INS), message
    # the command line rejects it before any trial starts (no database is created)
    result = run_cli("run", str(path), timeout=120)
    assert result.returncode == 2 and "shapley" in result.stderr
    assert not Path(yaml.safe_load(path.read_text())["database"]).exists()


def test_unknown_plugin_name_in_check_lists_known_ones(capsys):
    assert main(["plugins", "check", "shapley"]) == 2
    err = capsys.readouterr().err
    assert "unknown pruner(s) ['shapley']; known pruners: " in err and "taylor" in err


# a plugin in its own installed package ----------------------------------------------------
def test_installed_package_is_found_through_the_entry_point_group(tmp_path, monkeypatch, capsys):
    source, site = tmp_path / "example_pkg", tmp_path / "site"
    shutil.copytree(FIXTURES / "example_pkg", source)  # the build writes into the source tree
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--quiet", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    # as a user would: a fresh process with the package on its path
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    listing = run_cli("plugins", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("linf-norm "))
    assert "entry point linf-norm = sweep_example_pruner:LInfNorm (sweep-example-pruner)" in row
    assert "smallest L-infinity norm" in row

    # the rest in this process (entry points are read from sys.path at each load)
    monkeypatch.syspath_prepend(str(site))
    results = check_plugin(load_plugins()["linf-norm"], ["resnet18"], [0.5])
    assert [r.status for r in results] == [PASS] * 6, [r.line() for r in results]

    # the same name in the plugins folder is an error naming the file and the entry point
    clash = tmp_path / "plugins"
    clash.mkdir()
    (clash / "linf.py").write_text((FIXTURES / "example_pkg" / "sweep_example_pruner" / "__init__.py").read_text())
    assert main(["plugins", "list", "--plugins-dir", str(clash)]) == 2
    assert (f"two pruner plugins are named 'linf-norm': {clash / 'linf.py'} and entry point linf-norm = "
            "sweep_example_pruner:LInfNorm (sweep-example-pruner)") in capsys.readouterr().err
