"""Compute formats: parsing, training and evaluating in each, and measuring them once."""
from __future__ import annotations

import time

import pytest
import torch

from model_zoo import create_model
from sweep_service.worker.compute import (
    CHOICES,
    FP32,
    Compute,
    _clock,
    bf16_supported_on_cpu,
    candidates,
    probe_formats,
)
from sweep_service.worker.data import ImageSet, TensorBatches
from sweep_service.worker.training import evaluate, train

CPU = torch.device("cpu")
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def batches(n: int = 4, size: int = 32) -> TensorBatches:
    """Noise plus a colour per class, as uint8 images: learnable within a few steps."""
    generator = torch.Generator().manual_seed(0)
    colours = 128 + 60 * torch.randn(10, 3, 1, 1, generator=generator)
    labels = torch.randint(0, 10, (n * size,), generator=generator)
    images = (colours[labels] + 25 * torch.randn(n * size, 3, 32, 32, generator=generator)).clamp(0, 255)
    return TensorBatches(ImageSet(images.to(torch.uint8), labels), batch_size=size)


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
    first, last = (train(model, data, epochs=epochs, optimizer_settings=SGD, device=CPU, compute=chosen)
                   for epochs in (1, 4))
    assert last < first / 2
    assert model.conv1.weight.dtype == torch.float32
    assert model.conv1.weight.is_contiguous(memory_format=chosen.memory_format)
    assert evaluate(model, data, CPU, chosen) > 0.3  # chance: 0.1


def test_training_in_a_fixed_format_is_bit_identical_across_runs():
    found = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("mobilenet_v2", weights="none")
        train(model, batches(n=3), epochs=1, optimizer_settings=SGD, device=CPU,
              compute=Compute("fp32", channels_last=True))
        found.append(model.state_dict())
    assert all(torch.equal(found[0][k], found[1][k]) for k in found[0])


def test_a_probe_times_every_candidate_fastest_first():
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none")
    timings = probe_formats(model, next(iter(batches(n=1, size=16))), CPU, SGD)
    assert set(timings) == {c.name for c in candidates(CPU)}
    assert list(timings.values()) == sorted(timings.values()) and min(timings.values()) > 0


def test_bf16_is_a_candidate_exactly_where_the_cpu_has_it():
    assert (Compute("bf16", channels_last=True) in candidates(CPU)) == bf16_supported_on_cpu()
    assert candidates(CPU)[0] == FP32


def test_cpu_formats_are_timed_by_work_not_by_waiting_for_a_core():
    start = _clock(CPU)
    time.sleep(0.3)  # as a step preempted by another process
    waited = _clock(CPU) - start
    start = _clock(CPU)
    sum(i * i for i in range(2_000_000))
    worked = _clock(CPU) - start
    assert waited < 0.05 and worked > waited
