"""What a trial counts about a model besides accuracy: parameters and arithmetic. (Latency
and memory are measured by the measurement stage: sweep_service.worker.latency.)"""
from __future__ import annotations

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

