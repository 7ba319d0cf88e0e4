"""What a pruned trial records about its pruning, through the real trial code: the
channels removed (per group at the rate), the sped-up model's equality with the masked
model, the accuracy before fine-tuning; and, from a real sweep on a local Ray cluster,
that every recorded figure is what a recount from the saved models finds."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from model_zoo import create_model
from sweep_service.coordinator.config import parse_config
from sweep_service.coordinator.grid import expand
from sweep_service.spec import COMPLETED, PRUNED, TrialSpec
from sweep_service.worker import data as datasets
from sweep_service.worker.groups import channel_groups
from sweep_service.worker.pruning import select_layers
from sweep_service.worker.trial import run_trial
from tests.conftest import run_cli

GROUPED_MODELS = ["resnet18", "mobilenet_v2", "densenet121", "googlenet", "efficientnet_b0"]
RATES = [0.3, 0.7]  # every group size of these models has a whole count within 5 points of both


def pruned_spec(tmp_path, data_root, **changes) -> TrialSpec:
    config = parse_config(dict(
        name="pruned", models=["resnet18"], pruners=["l1norm"], rates=[0.5], dataset="synthetic",
        data_root=str(data_root), weights="none", prune_from="pretrained", finetune_epochs=0, batch_size=64,
        train_subset=128, test_subset=64, latency_runs=1, database=str(tmp_path / "r.db"),
        output_dir=str(tmp_path / "out")) | changes)
    return next(s for s in expand(config) if s.kind == PRUNED)


def layer_sparsities(result) -> dict[str, float]:
    return {name: 1 - kept / total for name, (kept, total) in json.loads(result["pruned_channels_json"]).items()}


def test_accuracy_pruned_is_the_pruned_models_accuracy_before_fine_tuning(tmp_path, data_root):
    result = run_trial(pruned_spec(tmp_path, data_root)).result  # no fine-tuning epoch
    assert result["status"] == COMPLETED, result.get("error")
    assert result["accuracy_pruned"] == result["accuracy"]
    channels = json.loads(result["pruned_channels_json"])
    assert channels["layer2.0.conv2"] == [64, 128] and channels["layer1.0.conv2"] == [64, 64]  # blocked by the stem
    assert result["channel_sparsity"] == pytest.approx(1 - sum(k for k, _ in channels.values())
                                                       / sum(t for _, t in channels.values()))
    assert result["speedup_max_abs_diff"] <= 1e-4
    assert 0 < result["time_group_s"] < result["time_speedup_s"]


def test_global_allocation_removes_as_many_filters_elsewhere(tmp_path, data_root):
    uniform = run_trial(pruned_spec(tmp_path, data_root)).result
    spread = run_trial(pruned_spec(tmp_path, data_root, allocation="global")).result
    assert uniform["status"] == spread["status"] == COMPLETED, spread.get("error")
    # the same filter count, give or take the last group's channel that did not fit
    assert abs(spread["channel_sparsity"] - uniform["channel_sparsity"]) < 0.01
    by_layer = layer_sparsities(spread)
    assert max(by_layer.values()) - min(by_layer.values()) > 0.2
    blocked = {"layer1.0.conv2", "layer1.1.conv2"}  # coupled with the stem
    assert {s for n, s in layer_sparsities(uniform).items() if n not in blocked} == {0.5}
    assert {layer_sparsities(r)[n] for r in (uniform, spread) for n in blocked} == {0.0}


def test_layer_grouping_records_how_far_speedup_falls_short_of_the_rate(tmp_path, data_root):
    result = run_trial(pruned_spec(tmp_path, data_root, grouping="layer", models=["mobilenet_v2"])).result
    assert result["status"] == COMPLETED, result.get("error")
    assert result["speedup_max_abs_diff"] <= 1e-4
    # every expand conv feeds a depthwise conv without a mask, so speedup keeps all its channels
    assert json.loads(result["pruned_channels_json"])["features.2.conv.0.0"] == [96, 96]
    assert result["channel_sparsity"] < 0.3


# a real sweep ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped_sweep(tmp_path_factory, data_root):
    """resnet18, mobilenet_v2, densenet121, googlenet and efficientnet_b0 (no pretrained
    weights, a few images), l1norm at two rates, through the command line on a local Ray
    cluster. One epoch each gives the batch norms statistics of their own."""
    folder = tmp_path_factory.mktemp("grouped")
    config = dict(
        name="grouped", models=GROUPED_MODELS, pruners=["l1norm"], rates=RATES, dataset="synthetic",
        data_root=str(data_root), weights="none", baseline_epochs=1, finetune_epochs=1, batch_size=32,
        eval_batch_size=64, train_subset=64, test_subset=64, latency_runs=1,
        database=str(folder / "grouped.db"), output_dir=str(folder / "out"))
    path = folder / "grouped.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    con = sqlite3.connect(config["database"])
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM trials")]
    assert len(rows) == len(GROUPED_MODELS) * (1 + len(RATES))
    assert {r["status"] for r in rows} == {COMPLETED}, [r["error"] for r in rows if r["error"]]
    return rows


@pytest.mark.slow
def test_every_trial_removes_what_it_chose_at_the_rate_of_every_group(grouped_sweep):
    for row in (r for r in grouped_sweep if r["kind"] == PRUNED):
        assert (row["grouping"], row["allocation"]) == ("dependency", "uniform")
        assert row["speedup_max_abs_diff"] <= 1e-4, row
        spec = TrialSpec.from_json(row["spec_json"])
        model = create_model(spec.model, weights="none")
        groups = channel_groups(model, select_layers(model, spec.model, spec.layers), spec.image_size)
        channels = json.loads(row["pruned_channels_json"])
        assert set(channels) == {m for g in groups for m in g.members}
        for group in groups:
            kept = {channels[m][0] for m in group.members}
            assert len(kept) == 1, (row["model"], group.members, kept)  # one choice for the group
            removed = 1 - kept.pop() / group.channels
            if group.prunable:
                assert abs(removed - row["rate"]) <= 0.05 + 1e-9, (row["model"], row["rate"], group.members, removed)
            else:
                assert removed == 0, (row["model"], group.members)
        assert abs(row["channel_sparsity"] - row["rate"]) <= 0.05
        assert 0 <= row["accuracy_pruned"] <= 1


def macs_by_hooks(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of the convs and linears on one image, from their shapes."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * kernel
        else:
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.slow
def test_recorded_figures_are_what_the_saved_models_give(grouped_sweep):
    """Parameters, MACs, file size, channels and accuracy, recounted from each saved model."""
    for row in grouped_sweep:
        spec = TrialSpec.from_json(row["spec_json"])
        path = Path(row["artifact_path"])
        assert path.stat().st_size == row["model_size_bytes"]
        if row["kind"] == PRUNED:
            model = torch.load(path, weights_only=False)
            modules = dict(model.named_modules())
            channels = json.loads(row["pruned_channels_json"])
            assert {n: modules[n].out_channels for n in channels} == {n: kept for n, (kept, _) in channels.items()}
            total = sum(t for _, t in channels.values())
            assert row["channel_sparsity"] == pytest.approx(1 - sum(modules[n].out_channels for n in channels) / total)
        else:
            model = create_model(spec.model, weights="none")
            model.load_state_dict(torch.load(path, weights_only=True))
        assert sum(p.numel() for p in model.parameters()) == row["params_after"]
        assert macs_by_hooks(model, spec.image_size) == row["macs_after"]
        test = datasets.subset(datasets.load(spec.dataset, spec.data_root).test, spec.test_subset, spec.seed + 1)
        correct = 0
        with torch.no_grad():
            for inputs, labels in datasets.TensorBatches(test, batch_size=spec.eval_batch_size,
                                                         image_size=spec.image_size):
                correct += int((model(inputs).argmax(dim=1) == labels).sum())
        assert correct / len(test.labels) == row["accuracy"], (row["model"], row["pruner"], row["rate"])

