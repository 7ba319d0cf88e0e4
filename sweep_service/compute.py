"""How a trial's arithmetic runs: number format (fp32, or bf16/fp16 autocast) and memory
layout (contiguous or channels-last).

Which is fastest depends on the model and the hardware, by a wide margin. On this
project's 2-core AVX512-BF16 machine, one thread, batch 128 at 32 px, one training step:
mobilenet_v2 548 ms in fp32, 228 ms in fp32 channels-last, 623 ms in bf16 channels-last;
resnet18 466, 435 and 278 ms. So `compute: auto` races the candidates on the first steps
of each model's baseline training (FormatRace). The candidates that came close race
again on the first steps of each pruned trial, since pruning changes the layers' shapes
and with them the ranking; the others are out for the model's trials, and so is a
candidate that keeps losing (FormatShortlist). Accuracy is always evaluated in fp32,
whatever trained the model.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS_LAST = "-channels-last"
CHOICES = tuple(f"{d}{layout}" for d in DTYPES for layout in ("", CHANNELS_LAST))
# A candidate whose timed step on a model's baseline cost at most this much more than the
# winner's races again on each pruned model. Here resnet18's fp32, fp32 channels-last and
# bf16 channels-last came within 4 % of each other on the baseline, while on its pruned
# models channels-last was 3-26 % faster than fp32; mobilenet_v2's losers cost 1.7-2.3x
# its winner and stay out.
CONTENDER_MARGIN = 0.25
# A candidate that has lost this many of a model's races in a row, the baseline's included,
# is out for the model's later trials however close it came. On the benchmark grid,
# resnet18's fp32 channels-last stayed within the margin of bf16 channels-last in every
# pruned trial of one run (14-23 % slower, after winning the first race) and raced in all
# nine. Racing it cost 0.04-0.07 s a trial here (the first 8 steps of ten freshly pruned
# resnet18s against their neighbours trained in bf16 channels-last alone: median 0.035 s,
# mean 0.066 s of CPU), well under 1 % of a trial, but paid by every trial of every model
# in such a tie. A format that is faster at some shapes wins some races, which ends its
# streak.
RACES_LOST_TO_DROP = 3


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


FP32 = Compute()


def bf16_supported_on_cpu() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86: AVX512-BF16 or AMX; ARM: BF16),
    without which bf16 autocast is emulated and slower than fp32."""
    capabilities = torch.cpu.get_capabilities()
    native = any(capabilities.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    return bool(native and torch.backends.mkldnn.is_available())


def candidates(device: torch.device) -> list[Compute]:
    if device.type == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return [FP32, Compute(amp), Compute(amp, channels_last=True)]
    # Channels-last first: oneDNN's own layout, which a run too short to time anything keeps.
    found = [Compute("fp32", channels_last=True)]
    if bf16_supported_on_cpu():
        found.append(Compute("bf16", channels_last=True))
    return [*found, FP32]


def contenders(timings: dict[str, float], among: list[str] | None = None) -> list[str]:
    """The raced formats within CONTENDER_MARGIN of the fastest, fastest first; given
    `among` (the formats still in the running before this race), only those of them, unless
    none is left."""
    best = min(timings.values())
    close = sorted((name for name, t in timings.items() if t <= best * (1 + CONTENDER_MARGIN)), key=timings.get)
    if among is None:
        return close
    return [name for name in close if name in among] or close


@dataclass
class FormatShortlist:
    """The formats a model's pruned trials train in: one, or those that race again on each
    trial's first steps. Each race of the model's trials narrows it (see `note_race`)."""

    formats: list[str] = field(default_factory=list)
    races_lost: dict[str, int] = field(default_factory=dict)  # in a row, per format

    def note_race(self, timings: dict[str, float]) -> None:
        """Keep the raced formats close to this race's winner (`contenders`), except those
        that have now lost RACES_LOST_TO_DROP races in a row."""
        close = contenders(timings, among=self.formats or None)
        winner = min(timings, key=timings.get)
        for name in timings:
            self.races_lost[name] = 0 if name == winner else self.races_lost.get(name, 0) + 1
        self.formats = [name for name in close if self.races_lost[name] < RACES_LOST_TO_DROP] or close[:1]

    def note_choice(self, name: str) -> None:
        """A baseline trained in `name` without a race (a fixed `compute`)."""
        self.formats = [name]


class FormatRace:
    """Picks the fastest candidate format on the first steps of the real training run.

    Each candidate in turn trains one warm-up step (which also sets up its kernels) and one
    timed step; the fastest then trains the rest. Every step of the race is a step of the
    trial's own training, so choosing costs no extra arithmetic, only the slower
    candidates' steps. Every candidate runs both steps whatever the timings, so a rerun
    with the same seed trains the same steps in the same formats. (Skipping the timed step
    of a candidate whose warm-up was already slow saved 0.3 s per baseline, but whether it
    was skipped depended on the host's load, and so did the baseline's weights: two
    benchmark runs differed by up to 7 accuracy points.) The winner does depend on timing;
    where two candidates are close, a fixed `compute` makes reruns bit-identical.

    On CPUs a step is timed in the process's CPU seconds, not wall seconds. Baselines race
    as the sweep starts, while Ray's processes and the other workers' imports compete for
    the cores: timed by the wall clock, one sweep's mobilenet_v2 baseline picked contiguous
    fp32, whose steps cost 1.7x channels-last's, for all nine of its trials. On GPUs the
    device is synchronised and the wall clock read.
    """

    def __init__(self, entrants: list[Compute], device: torch.device = torch.device("cpu")):
        if not entrants:
            raise ValueError("a format race needs at least one candidate")
        self.entrants = list(entrants)
        self.device = device
        self.timings: dict[str, float] = {}  # seconds of each candidate's timed step
        self._queue = list(entrants)
        self._warmed_up = False

    @property
    def racing(self) -> bool:
        return bool(self._queue)

    @property
    def current(self) -> Compute:
        """The format the next training step runs in."""
        return self._queue[0] if self._queue else self.winner

    @property
    def winner(self) -> Compute:
        """The fastest timed candidate (the first one if none was timed: a very short run)."""
        if not self.timings:
            return self.entrants[0]
        return Compute.parse(min(self.timings, key=self.timings.get))

    def clock(self) -> float:
        """Seconds on the clock the race compares steps by (see the class docstring)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def record(self, seconds: float) -> None:
        """Report the duration of the step just run in `current`."""
        if self._warmed_up:
            self.timings[self._queue.pop(0).name] = seconds
        self._warmed_up = not self._warmed_up
