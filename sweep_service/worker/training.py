"""Fine-tuning and evaluation loops (plain PyTorch; the pipeline feeds tensors).

Training runs in the trial's `Compute` format (see sweep_service.worker.compute);
evaluation always in fp32, in the same memory layout, so that accuracies do not depend on
the format that trained fastest.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
from torch import nn

from sweep_service.worker.compute import FP32, Compute
from sweep_service.worker.data import TensorBatches


def make_optimizer(model: nn.Module, settings: dict) -> torch.optim.Optimizer:
    if settings["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                               weight_decay=settings["weight_decay"], nesterov=settings["momentum"] > 0)
    return torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])


class FineTune:
    """`epochs` epochs of training with a short linear warm-up and cosine decay, which can
    stop after any step and continue later, in another process, exactly as if it had not
    stopped (an adaptive sweep's rungs, sweep_service.coordinator.search).

    The learning-rate schedule always spans all `epochs`: a fine-tune stopped at a quarter
    of its steps has trained as the first quarter of the full one. `state_dict()` holds
    everything the remaining steps depend on besides the model: the optimizer's and the
    schedule's state, the loss scaler, the step, the epoch's image order and the batch
    reached, the batches' generator (order, crops, flips) and torch's global generator
    (dropout)."""

    def __init__(self, model: nn.Module, batches: TensorBatches, *, epochs: int, optimizer_settings: dict,
                 device: torch.device, compute: Compute = FP32):
        self.model, self.batches, self.device, self.compute = model, batches, device, compute
        self.steps_per_epoch = len(batches)
        self.total_steps = epochs * self.steps_per_epoch
        compute.prepare(model)
        self.optimizer = make_optimizer(model, optimizer_settings)
        # max(1, ...): with no epochs there is no step, but LambdaLR evaluates the schedule once.
        total, warmup = max(1, self.total_steps), max(1, min(self.total_steps // 10, 100))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        )
        # fp16 gradients need loss scaling
        self.scaler = torch.amp.GradScaler(device.type, enabled=compute.dtype == "fp16")
        self.loss_fn = nn.CrossEntropyLoss()
        self.step = 0
        self._order: torch.Tensor | None = None  # the current epoch's image order, once drawn
        self._batch = 0  # batches of the current epoch done

    @property
    def budget(self) -> float:
        """The share of the fine-tune's steps done."""
        return self.step / self.total_steps if self.total_steps else 1.0

    def steps_for(self, fraction: float) -> int:
        """The step by which `fraction` of the fine-tune is done: at least one step, and all
        of them for a fraction of 1."""
        if fraction >= 1.0 or self.total_steps == 0:
            return self.total_steps
        return min(self.total_steps, max(1, round(fraction * self.total_steps)))

    def run(self, until: int | None = None) -> float:
        """Train up to step `until` (default: the end); returns the mean loss of the last
        epoch's steps in this run."""
        until = self.total_steps if until is None else min(until, self.total_steps)
        self.model.train()
        loss_sum, n = torch.zeros((), device=self.device), 0
        while self.step < until:
            if self._order is None:
                self._order, self._batch = self.batches.epoch_order(), 0
                loss_sum, n = torch.zeros((), device=self.device), 0
            for inputs, labels in self.batches.batches(self._order, self._batch):
                loss_sum += self._train_step(inputs, labels) * len(labels)  # no per-step device sync
                n += len(labels)
                self.step += 1
                self._batch += 1
                if self.step == until:
                    break
            if self._batch == self.steps_per_epoch:
                self._order = None
        return loss_sum.item() / n if n else float("nan")

    def _train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs, labels = self.compute.inputs(inputs, self.device), labels.to(self.device, non_blocking=True)
        with self.compute.autocast(self.device):
            loss = self.loss_fn(self.model(inputs), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "total_steps": self.total_steps, "order": self._order, "batch": self._batch,
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(), "batches_generator": self.batches.generator.get_state(),
            "torch_generator": torch.get_rng_state(),
            "cuda_generator": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the fine-tune `state` was taken from (same model, data and settings)."""
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"the checkpoint is of a fine-tune of {state['total_steps']} steps, "
                             f"this one has {self.total_steps}: the data or the epochs differ")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self._order, self._batch = state["step"], state["order"], state["batch"]
        self.batches.generator.set_state(state["batches_generator"])
        torch.set_rng_state(state["torch_generator"])
        if state["cuda_generator"] is not None:
            torch.cuda.set_rng_state(state["cuda_generator"], self.device)


def train(model: nn.Module, batches: TensorBatches, *, epochs: int, optimizer_settings: dict,
          device: torch.device, compute: Compute = FP32) -> float:
    """Train for `epochs` epochs (a FineTune run to its end); returns the last epoch's mean loss."""
    if epochs == 0:
        return float("nan")
    return FineTune(model, batches, epochs=epochs, optimizer_settings=optimizer_settings, device=device,
                    compute=compute).run()


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def with_precise_batch_norm(model: nn.Module, batches: Iterable, device: torch.device,
                            compute: Compute = FP32) -> nn.Module:
    """A copy of `model` whose batch-norm statistics are those of its weights as they stand,
    averaged over `batches` ("precise BN"); `model` itself is left as it is.

    For evaluating a model part-way through a fine-tune: its running statistics still
    remember the weights of earlier steps and, after pruning, the channels that were removed,
    which can put its accuracy tens of points below what its weights give (docs/search.md)."""
    model = copy.deepcopy(model)
    compute.prepare(model)
    model.eval()
    for norm in (m for m in model.modules() if isinstance(m, BATCH_NORMS)):
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
        norm.train()
    with torch.no_grad():
        for inputs, _ in batches:
            model(compute.inputs(inputs, device))
    return model.eval()


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
