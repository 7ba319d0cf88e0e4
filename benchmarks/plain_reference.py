"""The plain reference: the benchmark grid as a user of NNI would script it by hand.

One process, one trial after another, torchvision's CIFAR10 dataset with PIL
transforms through a DataLoader, torch's default thread count. It reads the same
generated CIFAR-10-format files (torchvision's reader without the md5 check), uses the
same subsets, seeds, optimiser and schedule as the service, so that accuracies can be
compared. Prints one JSON line per trial.

    python benchmarks/plain_reference.py GRID.json

With `start_from` in the grid ({model: state_dict file}), each model's pruned trials
start from those baseline weights instead of the script's own baseline (which is still
trained, timed and reported).
"""
from __future__ import annotations

import copy
import json
import math
import sys

import nni.compression.pruning as nni_pruning
import torch
import torchvision
from nni.compression.speedup import ModelSpeedup
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from sweep_service.worker.data import (
    cifar10_reader,  # torchvision's CIFAR10 minus the md5 check
)

PRUNERS = {"l1norm": nni_pruning.L1NormPruner, "l2norm": nni_pruning.L2NormPruner,
           "fpgm": nni_pruning.FPGMPruner}
HEADS = {"resnet18": "fc", "mobilenet_v2": "classifier.1"}
FIRST_CONVS = {"resnet18": "conv1", "mobilenet_v2": "features.0.0"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(name: str) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None)
    parent, _, attr = HEADS[name].rpartition(".")
    module = model.get_submodule(parent) if parent else model
    setattr(module, attr, nn.Linear(getattr(module, attr).in_features, 10))
    return model


def train(model, loader, epochs, lr, momentum, weight_decay):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=True)
    total = epochs * len(loader)
    warmup = max(1, min(total // 10, 100))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def data(grid: dict) -> tuple[Subset, DataLoader]:
    """The training subset (PIL transforms) and the test loader, as the service draws them."""
    normalize = transforms.Normalize(MEAN, STD)
    reader = cifar10_reader("synthetic")
    train_set = reader(grid["data_root"], train=True, transform=transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize]))
    test_set = reader(grid["data_root"], train=False, transform=transforms.Compose([
        transforms.ToTensor(), normalize]))
    seed = grid["seed"]
    train_idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:grid["train_subset"]]
    test_idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed + 1))[:grid["test_subset"]]
    return (Subset(train_set, train_idx.tolist()),
            DataLoader(Subset(test_set, test_idx.tolist()), batch_size=grid["eval_batch_size"]))


def prune(baseline: nn.Module, name: str, pruner_name: str, rate: float) -> nn.Module:
    model = copy.deepcopy(baseline).eval()
    # The service's default layers: convs but the first, and not the depthwise
    # ones (speedup prunes those along with the conv that feeds them).
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and m.groups == 1 and n != FIRST_CONVS[name]]
    pruner = PRUNERS[pruner_name](model, [{"op_names": layers, "sparse_ratio": rate}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    ModelSpeedup(model, torch.rand(1, 3, 32, 32), masks,
                 graph_module=torch.fx.symbolic_trace(model)).speedup_model()
    return model


def main(grid_file: str) -> None:
    grid = json.load(open(grid_file))
    train_subset, test_loader = data(grid)
    train_loader = DataLoader(train_subset, batch_size=grid["batch_size"], shuffle=True)
    seed, opt = grid["seed"], grid["optimizer"]
    for name in grid["models"]:
        torch.manual_seed(seed)
        baseline = build(name)
        train(baseline, train_loader, grid["baseline_epochs"], opt["lr"], opt["momentum"], opt["weight_decay"])
        print(json.dumps({"model": name, "pruner": "none", "rate": 0.0,
                          "accuracy": evaluate(baseline, test_loader)}), flush=True)
        if name in grid.get("start_from", {}):
            # Every pruned trial of a model starts from its baseline, so two independently
            # trained baselines would offset all of the model's pairs together; from the same
            # weights, a pair differs only by the two pipelines' random draws.
            baseline.load_state_dict(torch.load(grid["start_from"][name], weights_only=True))
        for pruner_name in grid["pruners"]:
            for rate in grid["rates"]:
                torch.manual_seed(seed)
                model = prune(baseline, name, pruner_name, rate)
                train(model, train_loader, grid["finetune_epochs"], opt["lr"], opt["momentum"], opt["weight_decay"])
                print(json.dumps({"model": name, "pruner": pruner_name, "rate": rate,
                                  "accuracy": evaluate(model, test_loader)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
