"""What a trial measures about a model besides accuracy: size, arithmetic, latency."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image (torch's FLOP counter / 2).

    Counted on the forward pass only: torch's counter overcounts the backward of
    grouped convolutions.
    """
    from torch.utils.flop_counter import (
        FlopCounterMode,  # imports triton: 0.1 s, for trials only
    )

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // 2


def cpu_latency_ms(model: nn.Module, image_size: int, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of a batch-1 forward pass on CPU, in milliseconds."""
    model = model.eval()
    x = torch.rand(1, 3, image_size, image_size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
