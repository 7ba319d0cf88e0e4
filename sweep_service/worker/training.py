"""Fine-tuning and evaluation loops (plain PyTorch; the pipeline feeds tensors).

Training runs in the trial's `Compute` format (see sweep_service.worker.compute);
evaluation always in fp32, in the same memory layout, so that accuracies do not depend on
the format that trained fastest.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from sweep_service.worker.compute import FP32, Compute


def make_optimizer(model: nn.Module, settings: dict) -> torch.optim.Optimizer:
    if settings["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                               weight_decay=settings["weight_decay"], nesterov=settings["momentum"] > 0)
    return torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])


def train(model: nn.Module, batches: Iterable, *, epochs: int, optimizer_settings: dict,
          device: torch.device, steps_per_epoch: int, compute: Compute = FP32) -> float:
    """Train with a short linear warm-up and cosine decay; returns the last epoch's mean loss."""
    if epochs == 0:
        return float("nan")
    compute.prepare(model)
    optimizer = make_optimizer(model, optimizer_settings)
    total = epochs * steps_per_epoch
    warmup = max(1, min(total // 10, 100))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    )
    loss_fn = nn.CrossEntropyLoss()
    # fp16 gradients need loss scaling
    scaler = torch.amp.GradScaler(device.type, enabled=compute.dtype == "fp16")
    model.train()
    mean_loss = float("nan")
    for _ in range(epochs):
        loss_sum = torch.zeros((), device=device)
        n = 0
        for inputs, labels in batches:
            inputs, labels = compute.inputs(inputs, device), labels.to(device, non_blocking=True)
            with compute.autocast(device):
                loss = loss_fn(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += loss.detach() * len(labels)  # no per-step device sync
            n += len(labels)
        mean_loss = loss_sum.item() / max(n, 1)
    return mean_loss


def evaluate(model: nn.Module, batches: Iterable, device: torch.device, compute: Compute = FP32) -> float:
    """Top-1 accuracy as a fraction, computed in fp32."""
    compute.prepare(model)
    model.eval()
    correct, total = 0, 0
    with torch.inference_mode():
        for inputs, labels in batches:
            predictions = model(compute.inputs(inputs, device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    return correct / total if total else float("nan")
