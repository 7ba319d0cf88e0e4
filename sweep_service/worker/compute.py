"""How a trial's arithmetic runs: number format (fp32, or bf16/fp16 autocast) and memory
layout (contiguous or channels-last).

Which is fastest depends on the model and the hardware, by a wide margin (on an
AVX512-BF16 CPU, mobilenet_v2 trained fastest in fp32 channels-last and resnet18 in bf16
channels-last, each 1.6-2.4x faster than the slowest choice). With `compute: auto` a
sweep measures each model's candidates once (`probe_formats`) and trains every trial of
that model in the fastest, so that a model's pruners and rates are compared under one
arithmetic. Accuracy is always evaluated in fp32, whatever trained the model.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS_LAST = "-channels-last"
CHOICES = tuple(f"{d}{layout}" for d in DTYPES for layout in ("", CHANNELS_LAST))
AUTO = "auto"
# Steps each candidate trains in a probe: the first sets up its kernels and is not timed.
PROBE_WARMUP_STEPS, PROBE_TIMED_STEPS = 1, 2


@dataclass(frozen=True)
class Compute:
    dtype: str = "fp32"  # a key of DTYPES
    channels_last: bool = False

    @classmethod
    def parse(cls, name: str) -> "Compute":
        if name not in CHOICES:
            raise ValueError(f"unknown compute {name!r}; choose {AUTO} or one of {', '.join(CHOICES)}")
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
                             "(AVX512-BF16, AMX or ARM BF16); use auto or fp32")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Lay out the model's weights as this format wants (in place)."""
        return model.to(memory_format=self.memory_format)

    def inputs(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def autocast(self, device: torch.device):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=DTYPES[self.dtype])


FP32 = Compute()


def bf16_supported_on_cpu() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86: AVX512-BF16 or AMX; ARM: BF16),
    without which bf16 autocast is emulated and slower than fp32."""
    capabilities = torch.cpu.get_capabilities()
    native = any(capabilities.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    return bool(native and torch.backends.mkldnn.is_available())


def candidates(device: torch.device) -> list[Compute]:
    """The formats worth measuring on `device`."""
    if device.type == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return [FP32, Compute(amp), Compute(amp, channels_last=True)]
    found = [FP32, Compute("fp32", channels_last=True)]
    if bf16_supported_on_cpu():
        found.append(Compute("bf16", channels_last=True))
    return found


def _clock(device: torch.device) -> float:
    """Seconds of work: on CPUs the process's CPU time, so that a step preempted by another
    process (Ray's start, another worker's imports) is not charged the wait; on GPUs the
    wall clock after synchronising the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def probe_formats(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                  optimizer_settings: dict) -> dict[str, float]:
    """Seconds of a training step of `model` (a throwaway copy: it is trained) on `batch`
    in each candidate format, fastest first. Each candidate trains PROBE_WARMUP_STEPS
    untimed steps, then the median of PROBE_TIMED_STEPS timed ones counts."""
    from sweep_service.worker.training import make_optimizer

    inputs, labels = batch
    labels = labels.to(device)
    loss_fn = nn.CrossEntropyLoss()
    timings = {}
    for compute in candidates(device):
        compute.prepare(model.to(device)).train()
        optimizer = make_optimizer(model, optimizer_settings)
        scaler = torch.amp.GradScaler(device.type, enabled=compute.dtype == "fp16")
        steps = []
        for step in range(PROBE_WARMUP_STEPS + PROBE_TIMED_STEPS):
            start = _clock(device)
            with compute.autocast(device):
                loss = loss_fn(model(compute.inputs(inputs, device)), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if step >= PROBE_WARMUP_STEPS:
                steps.append(_clock(device) - start)
        timings[compute.name] = sorted(steps)[len(steps) // 2]
    return dict(sorted(timings.items(), key=lambda item: item[1]))
