"""Model registry: register, list, create. Unknown names are errors that list the known ones."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

WEIGHT_CHOICES = ("imagenet", "none")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the cache nor downloadable."""


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a model besides how to build it.

    `first_conv` and `classifier` are module names (as in `named_modules()`); they are
    excluded from pruning by default, as pruning studies usually do.
    """

    name: str
    first_conv: str
    classifier: str
    min_input_size: int = 32
    # Builds the torchvision architecture with its ImageNet head (1000 classes) so that
    # the pretrained state dict loads as is; the head is replaced afterwards.
    build: Callable[[], nn.Module] | None = None
    # Returns the torchvision weights enum member (e.g. ResNet50_Weights.IMAGENET1K_V2);
    # a function, so that registering a model imports nothing. None: no ImageNet weights.
    imagenet_weights: Callable[[], object] | None = None
    # Prefixes of state-dict keys to drop when loading ImageNet weights (e.g. aux heads).
    ignore_keys: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def weights_file(name: str, weights_dir: str | Path) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of `name` under `weights_dir`."""
    url = model_info(name).imagenet_weights().url
    return Path(weights_dir) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_imagenet_weights(name: str, weights_dir: str | Path) -> dict[str, torch.Tensor]:
    """Return the ImageNet state dict of `name`, downloading it into the cache if needed.

    Uses torchvision's weights API (`Weights.get_state_dict`) with `weights_dir` as the
    torch hub directory, so the files are the ones torchvision itself would cache.
    """
    info = model_info(name)
    if info.imagenet_weights is None:
        raise WeightsUnavailableError(f"model {name!r} has no ImageNet weights; use weights: none")
    weights = info.imagenet_weights()
    target = weights_file(name, weights_dir)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(Path(weights_dir).resolve()))
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise WeightsUnavailableError(
            f"ImageNet weights for {name!r} are not in the cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Download {weights.url} and place it at "
            f"{target}, or set `weights: none` in the config to train from scratch."
        ) from exc
    finally:
        torch.hub.set_dir(previous)


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    weights: str = "none",
    weights_dir: str | Path = "weights",
) -> nn.Module:
    """Build `name` with ImageNet weights (`weights="imagenet"`) or random init (`"none"`),
    then give it a fresh `num_classes` head."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    info = model_info(name)
    model = info.build()
    if weights == "imagenet":
        state = fetch_imagenet_weights(name, weights_dir)
        state = {k: v for k, v in state.items() if not k.startswith(info.ignore_keys)}
        model.load_state_dict(state)
    head = model.get_submodule(info.classifier)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{name}: classifier {info.classifier!r} is {type(head).__name__}, not Linear")
    _replace_module(model, info.classifier, nn.Linear(head.in_features, num_classes))
    return model
