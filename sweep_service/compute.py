"""How a trial's arithmetic runs: number format (fp32, or bf16/fp16 autocast) and memory
layout (contiguous or channels-last).

Which is fastest depends on the model and the hardware, by a wide margin. On this
project's 2-core AVX512-BF16 machine, one thread, batch 128 at 32 px, one training step:
mobilenet_v2 548 ms in fp32, 228 ms in fp32 channels-last, 623 ms in bf16 channels-last;
resnet18 466, 435 and 278 ms. So `compute: auto` times a training step of each
candidate on the model itself (in the baseline trial) and the sweep reuses the winner for
that model's pruned trials. Accuracy is always evaluated in fp32, whatever trained it.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS_LAST = "-channels-last"
CHOICES = tuple(f"{d}{layout}" for d in DTYPES for layout in ("", CHANNELS_LAST))


@dataclass(frozen=True)
class Compute:
    dtype: str = "fp32"  # a key of DTYPES
    channels_last: bool = False

    @classmethod
    def parse(cls, name: str) -> "Compute":
        if name not in CHOICES:
            raise ValueError(f"unknown compute {name!r}; choose auto or one of {', '.join(CHOICES)}")
        return cls(name.removesuffix(CHANNELS_LAST), name.endswith(CHANNELS_LAST))

    @property
    def name(self) -> str:
        return self.dtype + (CHANNELS_LAST if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def check(self, device: torch.device) -> None:
        """Raise ValueError if `device` cannot run this format."""
        if self.dtype == "fp16" and device.type != "cuda":
            raise ValueError(f"compute {self.name} needs a GPU; on CPUs use auto, bf16 or fp32")
        if self.dtype == "bf16" and device.type == "cpu" and not bf16_supported_on_cpu():
            raise ValueError(f"compute {self.name}: this worker's CPU has no native bf16 "
                             "(AVX512-BF16 or AMX); use auto or fp32")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Lay out the model's weights as this format wants (in place)."""
        return model.to(memory_format=self.memory_format)

    def inputs(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def autocast(self, device: torch.device):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=DTYPES[self.dtype])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
        return torch.amp.GradScaler(device.type, enabled=self.dtype == "fp16")


FP32 = Compute()


def bf16_supported_on_cpu() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def candidates(device: torch.device) -> list[Compute]:
    if device.type == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return [FP32, Compute(amp), Compute(amp, channels_last=True)]
    found = [FP32, Compute("fp32", channels_last=True)]
    if bf16_supported_on_cpu():
        found.append(Compute("bf16", channels_last=True))
    return found


def choose(model: nn.Module, device: torch.device, *, batch_size: int, image_size: int,
           num_classes: int, steps: int = 1) -> tuple[Compute, dict[str, float]]:
    """Time `steps` training steps (after one warm-up step) of a copy of `model` in each
    candidate format on random inputs; return the fastest and the seconds per step of each
    candidate timed. A candidate whose warm-up step alone is several times slower than the
    best step so far is dropped without its timed steps.

    Runs on copies with the random number generators' state restored afterwards, so the
    trial's own training is the same whichever format wins.
    """
    timings: dict[str, float] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        inputs = torch.randn(batch_size, 3, image_size, image_size)
        labels = torch.randint(0, num_classes, (batch_size,))
        for compute in candidates(device):
            step = _training_step(compute, model, device, inputs, labels)
            warm_up = step()
            if timings and warm_up > _HOPELESS * min(timings.values()):
                continue
            timings[compute.name] = min(step() for _ in range(steps))
    best = min(timings, key=timings.get)
    return Compute.parse(best), timings


# A warm-up step (which also sets up the kernels; measured at most 1.3x a later step) this
# many times slower than the best candidate's step means the candidate cannot win.
_HOPELESS = 2.0


def _training_step(compute: Compute, model: nn.Module, device: torch.device, inputs: torch.Tensor,
                   labels: torch.Tensor):
    """A function that runs one SGD step of a copy of `model` in `compute` and returns its seconds."""
    trial_model = compute.prepare(copy.deepcopy(model).to(device)).train()
    optimizer = torch.optim.SGD(trial_model.parameters(), lr=0.0, momentum=0.9)
    scaler = compute.grad_scaler(device)
    x, y = compute.inputs(inputs, device), labels.to(device)

    def step() -> float:
        start = time.perf_counter()
        with compute.autocast(device):
            loss = nn.functional.cross_entropy(trial_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step
