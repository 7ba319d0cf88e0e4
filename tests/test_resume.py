"""A fine-tune stopped at a rung and continued from its checkpoint, in a fresh state, ends
with exactly the weights of one that never stopped: in the training loop alone, and through
a whole pruned trial (real NNI pruning and speedup)."""
from __future__ import annotations

import io

import pytest
import torch

from model_zoo import create_model
from sweep_service.spec import BASELINE, COMPLETED, PRUNED, TrialSpec
from sweep_service.worker import data
from sweep_service.worker.training import FineTune, with_precise_batch_norm
from sweep_service.worker.trial import run_trial

CPU = torch.device("cpu")
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def _batches(data_root, seed: int = 0) -> data.TensorBatches:
    splits = data.load("synthetic", str(data_root))
    return data.TensorBatches(data.subset(splits.train, 96, 0), batch_size=16, shuffle=True, augment=True,
                              seed=seed)


def _start(data_root) -> tuple[torch.nn.Module, FineTune]:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", weights="none")  # has dropout: torch's generator matters
    return model, FineTune(model, _batches(data_root), epochs=2, optimizer_settings=SGD, device=CPU)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("stop_at", [0.25, 0.5])  # 3 of 12 steps (mid-epoch), 6 (at the epoch's end)
def test_a_fine_tune_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(data_root, stop_at):
    whole, fine_tune = _start(data_root)
    fine_tune.run()

    model, first = _start(data_root)
    first.run(first.steps_for(stop_at))
    assert first.step == round(stop_at * 12) and first.budget == pytest.approx(stop_at)
    buffer = io.BytesIO()
    torch.save({"model": model, "fine_tune": first.state_dict()}, buffer)
    stopped = model.state_dict()["features.0.0.weight"].clone()

    torch.manual_seed(123)  # whatever ran in between in the worker process
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    second = FineTune(saved["model"], _batches(data_root, seed=7), epochs=2, optimizer_settings=SGD, device=CPU)
    second.load_state_dict(saved["fine_tune"])
    second.run()
    assert second.step == 12
    assert _same_weights(saved["model"], whole)
    assert not torch.equal(stopped, whole.state_dict()["features.0.0.weight"])  # it did train on


def test_a_checkpoint_of_another_fine_tune_is_refused(data_root):
    _, fine_tune = _start(data_root)
    fine_tune.run(2)
    model = create_model("mobilenet_v2", weights="none")
    longer = FineTune(model, _batches(data_root), epochs=3, optimizer_settings=SGD, device=CPU)
    with pytest.raises(ValueError, match="fine-tune of 12 steps, this one has 18"):
        longer.load_state_dict(fine_tune.state_dict())


def _pruned_spec(data_root, baseline: TrialSpec) -> TrialSpec:
    return TrialSpec(**{**baseline.identity(), "kind": PRUNED, "pruner": "l1norm", "rate": 0.5, "epochs": 2,
                        "baseline_key": baseline.key, "data_root": str(data_root)})


def test_a_pruned_trial_continued_from_its_rung_matches_one_run_in_full(data_root):
    common = dict(model="resnet18", dataset="synthetic", weights="none", image_size=32, batch_size=32,
                  eval_batch_size=256, optimizer=SGD, augment=True, seed=0, train_subset=192, test_subset=128,
                  calibration_batches=2, layers={"types": ["Conv2d"], "include_first_conv": False,
                                                 "include_classifier": False, "exclude": []},
                  prune_from="baseline", data_root=str(data_root))
    baseline = TrialSpec(kind=BASELINE, pruner="none", rate=0.0, epochs=1, baseline_key=None, **common)
    base = run_trial(baseline)
    assert base.result["status"] == COMPLETED, base.result.get("error")
    spec = _pruned_spec(data_root, baseline)

    full = run_trial(spec, base.artifact)
    rung = run_trial(spec, base.artifact, stop_at=0.25)
    resumed = run_trial(spec, resume_from=rung.rung_checkpoint)

    assert full.rung_checkpoint is None and resumed.rung_checkpoint is None
    assert rung.result["status"] == resumed.result["status"] == COMPLETED, (rung.result.get("error"),
                                                                            resumed.result.get("error"))
    assert rung.result["budget"] == 0.25 and resumed.result["budget"] == full.result["budget"] == 1.0
    assert rung.result["params_after"] == full.result["params_after"] == resumed.result["params_after"]
    assert resumed.result["params_before"] == full.result["params_before"]
    assert "time_prune_s" in rung.result and "time_prune_s" not in resumed.result  # continued, not pruned again
    load = lambda output: torch.load(io.BytesIO(output.artifact), weights_only=False)  # noqa: E731
    assert _same_weights(load(resumed), load(full))
    assert resumed.result["accuracy"] == full.result["accuracy"]


def test_a_model_at_a_rung_is_judged_with_batch_norm_statistics_of_its_weights_and_left_as_it_is():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    stale = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [torch.randn(8, 3, 6, 6) + 3 for _ in range(3)]
    precise = with_precise_batch_norm(model, [(x, None) for x in inputs], CPU)

    assert all(torch.equal(stale[k], v) for k, v in model.state_dict().items())  # the training model is untouched
    outputs = torch.cat([model[0](x) for x in inputs])
    norm = precise[1]
    assert torch.allclose(norm.running_mean, outputs.mean(dim=(0, 2, 3)), atol=1e-5)  # every batch, equally
    assert int(norm.num_batches_tracked) == 3 and not precise.training
