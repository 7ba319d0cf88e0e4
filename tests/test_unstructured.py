"""Unstructured pruning: NNI's LevelPruner's masks kept through real fine-tuning, and the
unstructured config run offline through the CLI, producing its table of accuracy and size."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_zoo import create_model
from sweep_service.plugin_cli import PASS, check_plugin
from sweep_service.plugins import get_plugin, load_plugins
from sweep_service.worker import unstructured
from sweep_service.worker.compute import Compute
from sweep_service.worker.data import ImageSet, TensorBatches
from sweep_service.worker.pruning import MaskError, select_layers
from sweep_service.worker.training import train
from tests.conftest import REPO, run_cli


def test_masked_weights_stay_zero_through_fine_tuning_and_after():
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none")
    layers = select_layers(model, "resnet18", {"types": ["Conv2d"]})
    masks = get_plugin("level").create().masks(model, 0.5, layers, None)
    assert unstructured.check_weight_masks(model, masks, layers, 0.5) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(MaskError, match="zero 50.0% of the selected layers' weights but the rate is 80%"):
        unstructured.check_weight_masks(model, masks, layers, 0.8)

    unstructured.apply_masks(model, masks)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), generator=generator, dtype=torch.uint8)
    batches = TensorBatches(ImageSet(images, torch.randint(0, 10, (48,), generator=generator)), batch_size=16)
    before = {name: module.weight_orig.detach().clone() for name, module in model.named_modules() if name in masks}
    train(model, batches, epochs=1, optimizer_settings={"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                        "weight_decay": 5e-4},
          device=torch.device("cpu"), compute=Compute("fp32", channels_last=True))
    unstructured.make_permanent(model)
    modules = dict(model.named_modules())
    for name, by_param in masks.items():
        weight = modules[name].weight
        assert isinstance(weight, torch.nn.Parameter) and not hasattr(modules[name], "weight_mask")
        assert torch.all(weight[by_param["weight"] == 0] == 0)  # kept zero
        assert not torch.equal(weight[by_param["weight"] == 1], before[name][by_param["weight"] == 1])  # trained
    selected = sum(modules[n].weight.numel() for n in layers)
    assert unstructured.zero_share(model) == pytest.approx(0.5 * selected / sum(p.numel() for p in model.parameters()),
                                                           abs=0.01)


def test_level_plugin_passes_the_checks_of_an_unstructured_plugin():
    results = check_plugin(load_plugins()["level"], ["mobilenet_v2"], [0.5])
    assert [r.check for r in results] == ["runs", "fit", "rate", "structure", "kept"]
    assert [r.status for r in results] == [PASS] * 5, [r.line() for r in results]


def test_a_plugin_must_declare_a_known_structure(tmp_path):
    (tmp_path / "odd.py").write_text(
        "from sweep_service.nni_adapter import NNIPruner\n\n"
        "class Odd(NNIPruner):\n    name = 'odd'\n    description = 'test'\n"
        "    nni_pruner = 'LevelPruner'\n    structure = 'semi'\n")
    registry = load_plugins(tmp_path)
    assert "odd" not in registry
    assert any("`structure` must be 'structured' or 'unstructured', got 'semi'" in why
               for why in registry.broken.values()), registry.broken


@pytest.mark.slow
def test_unstructured_config_runs_offline_and_tabulates_accuracy_and_size(tmp_path, data_root):
    result = run_cli("run", str(REPO / "configs" / "unstructured.yaml"), "--data-root", str(data_root),
                     "--db", str(tmp_path / "u.db"), "--out", str(tmp_path / "out"), timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    table = run_cli("status", "--db", str(tmp_path / "u.db"), "--variants", timeout=120)
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    rows = [line.split() for line in table.stdout.splitlines()[1:-1]]
    assert len(rows) == 4 * 2  # baseline + level 20/50/80 %, each fp32 and int8
    assert all("removed" not in " ".join(row) for row in rows)

    from sweep_service.coordinator.store import ResultStore

    with ResultStore(tmp_path / "u.db") as store:
        sweep_id = store.sweep()["sweep_id"]
        trials = {t["key"]: t for t in store.trials(sweep_id)}
        deflated = {}
        for v in store.variants(sweep_id):
            trial = trials[v["trial_key"]]
            assert v["error"] is None and Path(v["path"]).is_file() and v["accuracy"] > 0.2
            if trial["kind"] == "pruned":
                assert trial["structure"] == "unstructured" and trial["param_reduction"] == 0
                assert trial["params_after"] == trial["params_before"]
                assert trial["weights_zeroed"] == pytest.approx(trial["rate"] * 0.99, abs=0.03)
            deflated[(v["format"], trial["rate"])] = v["compressed_bytes"] / v["size_bytes"]
    for fmt in ("fp32", "int8"):  # zeros compress: the more zeroed, the smaller the deflated file
        shares = [deflated[(fmt, rate)] for rate in (0.0, 0.2, 0.5, 0.8)]
        assert shares == sorted(shares, reverse=True) and shares[-1] < 0.75 * shares[0], (fmt, shares)
