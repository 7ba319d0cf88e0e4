"""What each data set is called in results (no torch import: the report and CLI use it)."""
from __future__ import annotations

SYNTHETIC_TRAIN, SYNTHETIC_TEST = 10_000, 2_000
NUM_CLASSES = 10
TEST_SIZES = {"synthetic": SYNTHETIC_TEST, "cifar10": 10_000}


def test_set_size(dataset: str, test_subset: int | None) -> int:
    """How many images a trial's accuracy is measured on."""
    full = TEST_SIZES[dataset]
    return min(test_subset, full) if test_subset else full


def describe(dataset: str) -> str:
    if dataset == "synthetic":
        return f"synthetic CIFAR-10 format ({SYNTHETIC_TRAIN} train / {SYNTHETIC_TEST} test, generated)"
    if dataset == "cifar10":
        return f"CIFAR-10 (50000 train / {TEST_SIZES['cifar10']} test)"
    return dataset
