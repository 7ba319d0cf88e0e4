"""The pruner plugin contract and its registry.

A plugin is a subclass of `PrunerPlugin` with a `name`, a one-line `description`,
`needs_data`, and one method that says which output filters to remove:
- `ScoringPlugin.scores()` returns one score per output filter of each layer (higher =
  more important). The service turns scores into a choice of channels per group of
  coupled layers (sweep_service.worker.groups), at the rate, for each group alike or
  ranked across groups (`allocation`);
- `PrunerPlugin.masks()` returns NNI-style masks,
  ``{module_name: {"weight": 0/1 tensor shaped like the weight, "bias": ... (optional)}}``;
  the service forms each group's choice from its members' masks by vote.
A scoring plugin's masks are derived (`filter_masks_from_scores`), so every plugin has
`masks()`. The service does the rest (validation, physical removal with NNI's
ModelSpeedup, fine-tuning, evaluation, recording), so every plugin is measured the same way.

Plugins are found in two places, on every process that needs them (a Ray worker loads
them itself rather than trusting an import side effect of the coordinator):
- every ``*.py`` module not starting with ``_`` in the plugins folder (``SWEEP_PLUGINS_DIR``,
  default: the ``pruner_plugins/`` folder beside this package);
- installed packages declaring an entry point in the group ``sweep_service.pruners``
  that points at a `PrunerPlugin` subclass.

The full contract, for plugin authors, is in ``pruner_plugins/README.md``.
"""
from __future__ import annotations

import abc
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable

if TYPE_CHECKING:  # for annotations only: the command line starts without torch (plugins import it)
    import torch
    from torch import nn

ENTRY_POINT_GROUP = "sweep_service.pruners"
DEFAULT_PLUGINS_DIR = Path(__file__).resolve().parents[1] / "pruner_plugins"

PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED_NAME = "none"  # the `pruner` of baseline trials

Masks = dict[str, dict[str, "torch.Tensor"]]
Batches = Iterable[tuple["torch.Tensor", "torch.Tensor"]]


class PluginError(RuntimeError):
    pass


class PrunerPlugin(abc.ABC):
    """Base class of every pruning algorithm the sweep can compare."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_data: ClassVar[bool] = False

    @abc.abstractmethod
    def masks(self, model: nn.Module, rate: float, layers: list[str], data: Batches | None) -> Masks:
        """Return masks that remove about `rate` of the weights of `layers`.

        `model` is a copy in eval mode; the plugin may modify it. `layers` are module
        names (as in `model.named_modules()`) the plugin may prune; masks for other
        modules are an error. `data` is a few (inputs, labels) training batches when
        `needs_data` is true, else None.
        """


class ScoringPlugin(PrunerPlugin):
    """A plugin that scores filters; the service chooses the channels from the scores."""

    @abc.abstractmethod
    def scores(self, model: nn.Module, layers: list[str], data: Batches | None) -> dict[str, torch.Tensor]:
        """Return, for every layer of `layers`, one non-negative score per output filter
        (`weight.shape[0]` of them); higher means more important. Arguments as for
        `PrunerPlugin.masks`."""

    def masks(self, model: nn.Module, rate: float, layers: list[str], data: Batches | None) -> Masks:
        """Each layer at the rate, as NNI's filter pruners do (`grouping: layer`)."""
        return filter_masks_from_scores(model, layers, self.scores(model, layers, data), rate)


def filter_masks_from_scores(model: nn.Module, layers: list[str], scores: dict[str, torch.Tensor],
                             rate: float) -> Masks:
    """Filter-structured masks: in each layer, zero the `rate` share of output filters
    (rows of the weight, and their bias) with the lowest scores.

    `scores` maps each layer name to one score per output filter (`weight.shape[0]`);
    higher means more important. Like NNI's filter pruners, each layer loses
    ``int(rate * filters)`` filters (but keeps at least one), so every layer meets the rate
    and speedup can remove the channels.
    """
    import torch

    modules = dict(model.named_modules())
    masks: Masks = {}
    for name in layers:
        weight = modules[name].weight
        score = torch.as_tensor(scores[name]).detach().flatten().float().cpu()
        if score.numel() != weight.shape[0]:
            raise ValueError(f"{name}: {score.numel()} scores for {weight.shape[0]} output filters")
        keep = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
        keep[torch.argsort(score, stable=True)[:min(int(rate * weight.shape[0]), weight.shape[0] - 1)]] = 0
        masks[name] = {"weight": keep.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight).clone()}
        if isinstance(getattr(modules[name], "bias", None), torch.Tensor):
            masks[name]["bias"] = keep.clone()
    return masks


@dataclass(frozen=True)
class PluginEntry:
    name: str
    cls: type[PrunerPlugin]
    source: str  # file path or "entry point NAME = module:attr (distribution)"

    @property
    def description(self) -> str:
        return self.cls.description

    def create(self) -> PrunerPlugin:
        return self.cls()


def plugins_dir() -> Path:
    return Path(os.environ.get("SWEEP_PLUGINS_DIR") or DEFAULT_PLUGINS_DIR).resolve()


def _plugin_classes(namespace: dict) -> list[type[PrunerPlugin]]:
    return [
        obj for obj in namespace.values()
        if inspect.isclass(obj) and issubclass(obj, PrunerPlugin) and not inspect.isabstract(obj)
        and obj.__module__ == namespace["__name__"] and "name" in vars(obj)
    ]


def _entry(cls: type[PrunerPlugin], source: str) -> PluginEntry:
    """Check the class attributes a sweep relies on; errors name the plugin's source."""
    name = getattr(cls, "name", None)
    problems = []
    if not isinstance(name, str) or not PLUGIN_NAME.fullmatch(name):
        problems.append(f"`name` must be a string of letters, digits, '.', '_', '-', got {name!r}")
    elif name == RESERVED_NAME:
        problems.append(f"the name {RESERVED_NAME!r} is reserved for the baselines' rows")
    description = getattr(cls, "description", None)
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        problems.append("`description` must be a one-line string")
    if not isinstance(getattr(cls, "needs_data", None), bool):
        problems.append("`needs_data` must be True or False")
    if problems:
        raise PluginError(f"pruner plugin {cls.__name__} in {source}: " + "; ".join(problems))
    return PluginEntry(name, cls, source)


def _from_folder(folder: Path) -> tuple[list[PluginEntry], dict[str, str]]:
    """The plugins of the folder's files, and the files that failed (path -> why)."""
    found, broken = [], {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"pruner_plugins.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            found += [_entry(cls, str(path)) for cls in _plugin_classes(vars(module))]
        except PluginError as exc:
            broken[str(path)] = str(exc)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            broken[str(path)] = f"plugin file {path} failed to import: {type(exc).__name__}: {exc}"
    return found, broken


def _from_entry_points() -> tuple[list[PluginEntry], dict[str, str]]:
    """The plugins of installed packages, and the entry points that failed (source -> why)."""
    found, broken = [], {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name} = {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")
        try:
            cls = ep.load()
        except Exception as exc:
            broken[source] = f"{source} failed to load: {type(exc).__name__}: {exc}"
            continue
        if not (inspect.isclass(cls) and issubclass(cls, PrunerPlugin)) or inspect.isabstract(cls):
            broken[source] = f"{source} is not a concrete PrunerPlugin subclass"
            continue
        try:
            found.append(_entry(cls, source))
        except PluginError as exc:
            broken[source] = str(exc)
    return found, broken


class Registry(dict):
    """The plugins by name, and the plugin files that could not be loaded (`broken`: path ->
    why). A broken file makes only its own plugins unavailable; an unknown name is an error
    that names the broken files, which may define it."""

    def __init__(self, plugins: dict[str, PluginEntry], broken: dict[str, str]):
        super().__init__(plugins)
        self.broken = broken

    def unknown(self, names: list[str]) -> str:
        """The message for pruner names that are not in the registry."""
        message = f"unknown pruner(s) {names}; known pruners: {', '.join(sorted(self))}"
        if self.broken:
            message += "; these plugin files failed to load and may define them: " + "; ".join(self.broken.values())
        return message


def load_plugins(folder: str | Path | None = None) -> Registry:
    """All plugins by name. Two plugins with one name are an error naming both sources."""
    if folder:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise PluginError(f"plugins folder {folder} does not exist")
    else:
        folder = plugins_dir()
        if not folder.is_dir():
            raise PluginError(f"SWEEP_PLUGINS_DIR={os.environ.get('SWEEP_PLUGINS_DIR')}: no such folder; "
                              "point it at a folder of plugin files, or unset it to use pruner_plugins/"
                              if os.environ.get("SWEEP_PLUGINS_DIR") else f"plugins folder {folder} does not exist")
    entries, broken = _from_folder(folder)
    installed, broken_installed = _from_entry_points()
    registry: dict[str, PluginEntry] = {}
    for entry in entries + installed:
        if entry.name in registry:
            raise PluginError(
                f"two pruner plugins are named {entry.name!r}: {registry[entry.name].source} and "
                f"{entry.source}; rename one of them"
            )
        registry[entry.name] = entry
    return Registry(registry, {**broken, **broken_installed})


def get_plugin(name: str, folder: str | Path | None = None) -> PluginEntry:
    plugins = load_plugins(folder)
    if name not in plugins:
        raise PluginError(plugins.unknown([name]))
    return plugins[name]
