"""Config validation: every kind of bad input is rejected up front, naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweep_service.coordinator.config import ConfigError, load_config, parse_config
from tests.conftest import run_cli


def test_valid_config_resolves_paths_and_rate_ranges(tiny_config):
    path, _ = tiny_config(rates={"start": 0.1, "stop": 0.8, "step": 0.1})
    config = load_config(path)
    assert config.rates == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert config.database.is_absolute() and config.data_root.is_absolute()
    assert config.sweep_id().startswith("tiny-")


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"models": ["resnet18", "lenet9"]}, ["models", "lenet9", "known models", "resnet50"]),
        ({"pruners": ["l1norm", "magic"]}, ["pruners", "magic", "known pruners", "fpgm"]),
        ({"rates": [0.5, 1.2]}, ["rates", "between 0 and 1", "1.2"]),
        ({"rates": [0.0]}, ["rates", "between 0 and 1"]),
        ({"finetune_epochs": -1}, ["finetune_epochs", "greater than or equal to 0"]),
        ({"baseline_epochs": -3}, ["baseline_epochs", "greater than or equal to 0"]),
        ({"dataset": "imagenet"}, ["dataset", "'cifar10' or 'synthetic'"]),
        ({"weights": "coco"}, ["weights", "'imagenet' or 'none'"]),
        ({"prune_from": "scratch"}, ["prune_from", "'baseline' or 'pretrained'"]),
        ({"models": ["alexnet"], "image_size": 32}, ["alexnet", "at least 63 px"]),
        ({"batch_size": 0}, ["batch_size", "at least 2"]),
        # accepted before, then every trial failed in batch norm (one image per batch)
        ({"batch_size": 1}, ["batch_size", "at least 2, got 1", "batch norm"]),
        ({"train_subset": 1}, ["train_subset", "at least 2, got 1"]),
        ({"seed": -1}, ["seed", "greater than or equal to 0"]),
        ({"seed": 2**40}, ["seed", "less than 4294967296"]),
        ({"optimizer": {"lr": float("inf")}}, ["optimizer.lr", "finite number"]),
        ({"resources": {"cpus": float("nan")}}, ["resources.cpus", "finite number"]),
        ({"rates": {"start": 0.0001, "stop": 0.9999, "step": 1e-9}}, ["rates", "more than 1000 rates"]),
        ({"rates": {"start": 0.8, "stop": 0.1, "step": 0.1}}, ["rates", "stop 0.1 is below start 0.8"]),
        ({"trial_timeout_s": 0}, ["trial_timeout_s", "greater than 0"]),
        ({"node_wait_s": -1}, ["node_wait_s", "greater than or equal to 0"]),
        ({"resources": {"cpus": 0}}, ["resources.cpus", "greater than 0"]),
        ({"optimizer": {"name": "lbfgs"}}, ["optimizer.name", "'sgd' or 'adamw'"]),
        ({"epochs": 3}, ["epochs", "unknown field", "finetune_epochs"]),
        ({"layers": {"type": ["Conv2d"]}}, ["layers.type", "unknown field", "types"]),
        ({"quantize": ["int8"]}, ["quantize", "must include fp32"]),
        ({"quantize": ["fp32", "int4"]}, ["quantize.1", "'fp32', 'fp16' or 'int8'"]),
        ({"measure": {"on": "edge node"}}, ["measure.on", "not a Ray resource name"]),
        ({"measure": {"batch_sizes": [1, 8, 1]}}, ["measure.batch_sizes", "repeat"]),
        ({"measure": {"runs": 0}}, ["measure.runs", "greater than 0"]),
        ({"measure": {"thread": 2}}, ["measure.thread", "unknown field", "threads"]),
        ({"latency_runs": 5}, ["latency_runs", "measure.runs"]),
        ({"seeds": [0, 1], "repeats": 3}, ["`seeds`", "`repeats`", "not both"]),
        ({"seeds": [0, 1], "seed": 5}, ["`seed`", "`seeds`", "not both"]),
        ({"seeds": [1, 2, 1]}, ["seeds", "repeat a value"]),
        ({"seeds": []}, ["seeds", "at least 1 item"]),
        ({"repeats": 0}, ["repeats", "greater than 0"]),
        ({"grouping": "global"}, ["grouping", "'dependency' or 'layer'"]),
        ({"allocation": "greedy"}, ["allocation", "'uniform' or 'global'"]),
        ({"allocation": "global", "pruners": ["l1norm", "nni-taylor", "random"]},
         ["allocation: allocation: global ranks filter scores across groups, but pruner(s) nni-taylor return "
          "only masks; use allocation: uniform or pruners that return scores"]),
        ({"allocation": "global", "grouping": "layer"},
         ["allocation: allocation: global ranks channel groups, but grouping: layer prunes each layer at the rate"]),
        ({"round_to": 0}, ["round_to", "greater than 0"]),
        ({"round_to": 8, "grouping": "layer"},
         ["round_to: round_to rounds the channels each group keeps, but grouping: layer keeps what NNI's per-layer "
          "masks leave; use grouping: dependency or drop round_to"]),
        ({"round_to": 8, "pruners": ["l1norm", "level"]},
         ["pruner(s) level zero single weights and remove no channel; run them in a sweep without round_to"]),
    ],
)
def test_bad_field_names_the_field_and_allowed_values(tiny_config, changes, expected):
    path, _ = tiny_config(**changes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


@pytest.mark.parametrize("changes, seeds", [
    ({}, [0]),
    ({"seed": 7}, [7]),
    ({"repeats": 3}, [0, 1, 2]),
    ({"seed": 5, "repeats": 2}, [5, 6]),
    ({"seeds": [3, 1, 4]}, [3, 1, 4]),
])
def test_seed_seeds_and_repeats_give_the_seeds_to_run(tiny_config, changes, seeds):
    path, _ = tiny_config(**changes)
    assert load_config(path).run_seeds == seeds


def test_missing_required_field(tiny_config):
    path, config = tiny_config()
    del config["dataset"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="dataset: required field is missing"):
        load_config(path)


def test_measure_on_is_a_key_as_written_in_yaml(tiny_config):
    """YAML 1.1 reads a bare `on` as the boolean true; the config keeps it the key it reads as."""
    path, config = tiny_config()
    text = yaml.safe_dump(config) + "measure: {on: edge, threads: 1}\nquantize: [fp32, int8]\n"
    path.write_text(text)
    loaded = load_config(path)
    assert loaded.measure.on == "edge" and loaded.quantize == ["fp32", "int8"]


@pytest.mark.parametrize("text, expected", [
    ("models: [resnet18\npruners: l1norm", "not valid YAML"),
    ("- just\n- a list", "expected a mapping"),
    ("", "is empty"),
])
def test_malformed_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_overrides_win_and_are_validated(tiny_config, tmp_path):
    path, _ = tiny_config()
    config = load_config(path, {"database": tmp_path / "other.db", "output_dir": None})
    assert config.database == (tmp_path / "other.db").resolve()
    with pytest.raises(ConfigError, match="rates"):
        parse_config({**yaml.safe_load(path.read_text()), "rates": [2]})


@pytest.mark.parametrize("changes, expected", [
    ({"models": ["resnet18", "lenet9"]}, "unknown model(s) ['lenet9']"),
    ({"pruners": ["magic"]}, "unknown pruner(s) ['magic']"),
    ({"rates": [0.5, 1.5]}, "strictly between 0 and 1"),
    ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"compute": "int8"}, "unknown compute 'int8'; choose auto or one of fp32"),
    ({"compute": "fp16"}, "compute fp16 runs only on GPUs but resources.gpus is 0"),
    ({"allocation": "global", "pruners": ["nni-taylor"]}, "pruner(s) nni-taylor return only masks"),
])
def test_cli_rejects_bad_config_before_anything_is_recorded_or_run(tiny_config, changes, expected):
    path, config = tiny_config(**changes)
    result = run_cli("run", str(path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Ray" not in result.stderr + result.stdout
    assert not Path(config["database"]).exists(), "a database was written for a bad config"


def test_cli_repeats_override_is_validated_with_the_config(tiny_config):
    path, config = tiny_config(seeds=[0, 1])
    result = run_cli("run", str(path), "--repeats", "3", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "both `seeds` and `repeats` are set" in result.stderr
    result = run_cli("run", str(path), "--repeats", "0", timeout=120)
    assert result.returncode == 2 and "repeats: Input should be greater than 0" in result.stderr
    assert not Path(config["database"]).exists()


def test_cli_rejects_missing_and_malformed_files(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.yaml"), timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [resnet18\n")
    result = run_cli("run", str(bad), timeout=120)
    assert result.returncode == 2 and "not valid YAML" in result.stderr
