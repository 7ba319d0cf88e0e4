"""What each data set is called in results (no torch import: the report and CLI use it)."""
from __future__ import annotations

SYNTHETIC_TRAIN, SYNTHETIC_TEST = 10_000, 2_000


def describe(dataset: str) -> str:
    if dataset == "synthetic":
        return f"synthetic CIFAR-10 format ({SYNTHETIC_TRAIN} train / {SYNTHETIC_TEST} test, generated)"
    if dataset == "cifar10":
        return "CIFAR-10 (50000 train / 10000 test)"
    return dataset
