"""Compute formats: parsing, training and evaluating in each, and choosing the fastest."""
from __future__ import annotations

import pytest
import torch

from model_zoo import create_model
from sweep_service.compute import CHOICES, FP32, Compute, bf16_supported_on_cpu, candidates, choose
from sweep_service.training import evaluate, train

CPU = torch.device("cpu")
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def batches(n: int = 4, size: int = 32):
    """Noise plus a colour per class: learnable within a few steps."""
    generator = torch.Generator().manual_seed(0)
    colours = 2 * torch.randn(10, 3, 1, 1, generator=generator)
    labels = [torch.randint(0, 10, (size,), generator=generator) for _ in range(n)]
    return [(torch.randn(size, 3, 32, 32, generator=generator) + colours[y], y) for y in labels]


def test_names_round_trip_and_unknown_names_are_refused():
    assert [Compute.parse(name).name for name in CHOICES] == list(CHOICES)
    assert Compute.parse("bf16-channels-last") == Compute("bf16", channels_last=True)
    with pytest.raises(ValueError, match="choose auto or one of"):
        Compute.parse("int8")


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="needs a GPU"):
        Compute.parse("fp16").check(CPU)


@pytest.mark.parametrize("compute", [c.name for c in candidates(CPU)])
def test_training_in_each_cpu_candidate_learns_and_evaluates_in_fp32(compute):
    chosen = Compute.parse(compute)
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none")
    data = batches()
    first, last = (train(model, data, epochs=epochs, optimizer_settings=SGD, device=CPU,
                         steps_per_epoch=len(data), compute=chosen) for epochs in (1, 4))
    assert last < first / 2
    assert model.conv1.weight.dtype == torch.float32
    assert model.conv1.weight.is_contiguous(memory_format=chosen.memory_format)
    assert evaluate(model, data, CPU, chosen) > 0.3  # chance: 0.1


def test_choose_times_the_candidates_and_leaves_the_model_and_rng_alone():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", weights="none")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    best, timings = choose(model, CPU, batch_size=16, image_size=32, num_classes=10, steps=1)
    after_choose = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after_choose, torch.rand(1))  # the trial's random stream is untouched
    # fp32 is always timed; a candidate is only skipped when its warm-up step is hopeless
    assert "fp32" in timings and set(timings) <= {c.name for c in candidates(CPU)}
    assert timings[best.name] == min(timings.values()) and all(t > 0 for t in timings.values())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.features[0][0].weight.is_contiguous()


def test_bf16_is_a_candidate_exactly_where_the_cpu_has_it():
    assert (Compute("bf16", channels_last=True) in candidates(CPU)) == bf16_supported_on_cpu()
    assert candidates(CPU)[0] == FP32
