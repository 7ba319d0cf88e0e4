"""Fine-tuning and evaluation loops (plain PyTorch; the pipeline feeds tensors).

On a GPU, training and evaluation run under automatic mixed precision (bf16 where the
device supports it, else fp16 with loss scaling); on CPUs in fp32, which measured
fastest for these models here.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
from torch import nn


def make_optimizer(model: nn.Module, settings: dict) -> torch.optim.Optimizer:
    if settings["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                               weight_decay=settings["weight_decay"], nesterov=settings["momentum"] > 0)
    return torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])


def train(model: nn.Module, batches: Iterable, *, epochs: int, optimizer_settings: dict,
          device: torch.device, steps_per_epoch: int) -> float:
    """Train with a short linear warm-up and cosine decay; returns the last epoch's mean loss."""
    if epochs == 0:
        return float("nan")
    optimizer = make_optimizer(model, optimizer_settings)
    total = epochs * steps_per_epoch
    warmup = max(1, min(total // 10, 100))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    )
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(device) == torch.float16)
    model.train()
    mean_loss = float("nan")
    for _ in range(epochs):
        loss_sum, n = 0.0, 0
        for inputs, labels in batches:
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with _autocast(device):
                loss = loss_fn(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += loss.item() * len(labels)
            n += len(labels)
        mean_loss = loss_sum / max(n, 1)
    return mean_loss


def evaluate(model: nn.Module, batches: Iterable, device: torch.device) -> float:
    """Top-1 accuracy as a fraction."""
    model.eval()
    correct, total = 0, 0
    with torch.inference_mode(), _autocast(device):
        for inputs, labels in batches:
            predictions = model(inputs.to(device)).argmax(dim=1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    return correct / total if total else float("nan")


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device):
    dtype = _amp_dtype(device)
    return torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
