"""`python -m sweep_service plugins list|check`: which pruners a sweep can use, and
whether a new one works before a sweep spends hours on it.

`check` runs the plugin the way a trial does (a copy of the model in eval mode, the
layers the default layer selection picks, calibration batches if it asks for them), on
small randomly initialised models, and reports one line per check:
- runs: `scores()` (a scoring plugin) or `masks()` returns without raising;
- fit: scores for every selected layer, one per output filter, finite and non-negative;
  or masks only for the selected layers, shaped like the parameters, values 0/1;
- rate: the masks (a scoring plugin's: each layer at the rate) remove the requested share
  of the selected layers' weights (within the tolerance trials allow);
- structure: whole output filters are masked (speedup removes only those, and leaves
  any other masked weight as it is);
- speedup: NNI's ModelSpeedup removes the masked channels of each layer's masks
  (`grouping: layer`), the pruned model still runs and has fewer parameters;
- grouped: what a trial does by default (`grouping: dependency`): one choice of channels
  per group of coupled layers, removed by speedup, and the sped-up model computes what
  the masked model computes.
The validation is the one trials use (`sweep_service.worker.pruning.check_scores` and
`check_masks`), so a plugin that passes here is not failed by a trial for its output.
Each call into the plugin, into speedup and into the grouped pruning runs under a time limit
(`--time-limit`): one that does not return in time is a FAIL, and the command ends there (a
sweep would cancel such a trial at its `trial_timeout_s`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from sweep_service.plugins import (
    ENTRY_POINT_GROUP,
    Masks,
    PluginEntry,
    PluginError,
    ScoringPlugin,
    load_plugins,
    plugins_dir,
)

DEFAULT_MODELS = ("resnet18", "mobilenet_v2")  # residual adds; depthwise convs
DEFAULT_RATES = (0.3, 0.7)
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 2, 16
NUM_CLASSES = 10

PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"
CHECKS = ("runs", "fit", "rate", "structure", "speedup", "grouped")
TIME_LIMIT_S = 120.0  # per call into the plugin or the pruning, on these small models

if TYPE_CHECKING:  # torch is imported by the checks, not to build the command line
    import torch
    from torch import nn


def register(subparsers: argparse._SubParsersAction) -> None:
    plugins = subparsers.add_parser(
        "plugins", help="list pruner plugins, or check one",
        description=f"Pruner plugins come from the plugins folder (SWEEP_PLUGINS_DIR, default "
                    f"pruner_plugins/) and from installed packages with an entry point in the "
                    f"group {ENTRY_POINT_GROUP!r}. See pruner_plugins/README.md.")
    sub = plugins.add_subparsers(dest="plugins_command", required=True, metavar="SUBCOMMAND")

    listing = sub.add_parser("list", help="list the pruners a sweep config may name",
                             description="List every pruner plugin: name, whether it needs "
                                         "calibration data, where it comes from, description.")
    _add_plugins_dir(listing)
    listing.set_defaults(func=list_handler)

    check = sub.add_parser(
        "check", help="run a plugin on small models and check its masks",
        description="Run a plugin on small randomly initialised models at a few rates and check, "
                    "one line per check, that its masks fit the selected layers, honour the rate "
                    "and survive speedup. Exits non-zero if any check fails.")
    check.add_argument("name", help="plugin name, as in `plugins list`")
    check.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                       help=f"models to prune (default: {' '.join(DEFAULT_MODELS)})")
    check.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES), metavar="RATE",
                       help=f"pruning rates, fractions in (0, 1) (default: {' '.join(map(str, DEFAULT_RATES))})")
    check.add_argument("--image-size", type=int, default=32, help="input size in pixels (default: 32)")
    check.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, metavar="SECONDS",
                       help="longest a call of the plugin, of speedup or of the grouped pruning may take "
                            f"(default: {TIME_LIMIT_S:.0f})")
    _add_plugins_dir(check)
    check.set_defaults(func=check_handler)


def _add_plugins_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugins-dir", type=Path, default=None,
                        help="plugins folder (default: $SWEEP_PLUGINS_DIR, else pruner_plugins/)")


# list ------------------------------------------------------------------------------------
def list_handler(args: argparse.Namespace) -> int:
    try:
        plugins = load_plugins(args.plugins_dir)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [("NAME", "DATA", "GIVES", "SOURCE", "DESCRIPTION")]
    rows += [(e.name, "yes" if e.cls.needs_data else "-", "scores" if issubclass(e.cls, ScoringPlugin) else "masks",
              _short_source(e.source), e.description)
             for e in sorted(plugins.values(), key=lambda e: e.name)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    folder = Path(args.plugins_dir).resolve() if args.plugins_dir else plugins_dir()
    print(f"\n{len(plugins)} pruners: *.py files in {_short_source(str(folder))}/ and entry points in "
          f"the group {ENTRY_POINT_GROUP!r}. DATA: the plugin asks for calibration batches. GIVES: "
          "scores per filter (any `allocation`) or masks (`allocation: uniform` only).")
    for problem in plugins.broken.values():
        print(f"error: {problem}", file=sys.stderr)
    # Sweeps that do not use a broken file's plugins still run; the listing says it is broken.
    return 1 if plugins.broken else 0


def _short_source(source: str) -> str:
    """A plugin file relative to the working directory if it lies below it."""
    path = Path(source)
    if not path.is_absolute():
        return source
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return source


# check -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    model: str
    rate: float
    check: str  # one of CHECKS
    status: str  # PASS, FAIL, WARN (worth knowing, not a failure), SKIP (an earlier check failed)
    detail: str
    timed_out: bool = False  # a call did not return: nothing more is checked

    def line(self) -> str:
        return f"{self.status}  {self.model:<14} {self.rate:>4.0%}  {self.check:<9}  {self.detail}"


def check_handler(args: argparse.Namespace) -> int:
    from model_zoo import UnknownModelError, model_info

    try:
        plugins = load_plugins(args.plugins_dir)
        if args.name not in plugins:
            raise PluginError(plugins.unknown([args.name]))
        entry = plugins[args.name]
        for model in args.models:
            if args.image_size < model_info(model).min_input_size:
                raise ValueError(f"{model} needs --image-size of at least {model_info(model).min_input_size}")
        bad = [r for r in args.rates if not 0.0 < r < 1.0]
        if bad:
            raise ValueError(f"rates must be fractions strictly between 0 and 1, got {bad}")
        if not args.time_limit > 0:
            raise ValueError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    except (PluginError, UnknownModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    # Small models on tiny batches gain nothing from more threads, and on a busy machine
    # (a sweep running beside) extra threads spin: one thread is several times faster then.
    torch.set_num_threads(1)
    data = (f"yes ({CALIBRATION_BATCHES} random batches of {CALIBRATION_BATCH_SIZE} images)"
            if entry.cls.needs_data else "no")
    print(f"checking pruner {entry.name!r} from {_short_source(entry.source)}\n"
          f"  {entry.description}\n  needs data: {data}; models: {', '.join(args.models)} "
          f"(random init, {args.image_size} px); rates: {', '.join(f'{r:.0%}' for r in args.rates)}\n",
          flush=True)
    results = check_plugin(entry, args.models, args.rates, image_size=args.image_size,
                           time_limit_s=args.time_limit, emit=lambda r: print(r.line(), flush=True))
    failed = [r for r in results if r.status == FAIL]
    warned = [r for r in results if r.status == WARN]
    if failed:
        checks = {r.check for r in failed}
        consequence = ("a sweep records such trials as failed" if checks & {"runs", "fit", "rate"}
                       else "a sweep's results for it would not show what it prunes")
        if any(r.timed_out for r in failed):
            consequence += "; checking stopped at the call that did not return"
        print(f"\n{entry.name}: {len(failed)} of {len(results)} checks FAILED ({', '.join(sorted(checks))}); "
              f"{consequence}")
        return 1
    print(f"\n{entry.name}: all {len(results) - len(warned)} checks passed"
          + (f", {len(warned)} warnings" if warned else "")
          + ". Add it to a config's `pruners:` to sweep it.")
    return 0


def check_plugin(entry: PluginEntry, models: list[str], rates: list[float], *, image_size: int = 32,
                 time_limit_s: float = TIME_LIMIT_S,
                 emit: Callable[[CheckResult], None] = lambda result: None) -> list[CheckResult]:
    """Run the plugin on each model at each rate; return (and emit) one result per check.
    Stops after a call that did not return within `time_limit_s`."""
    import torch

    from model_zoo import create_model
    from sweep_service.coordinator.config import LayerSelection
    from sweep_service.quiet import quiet_nni
    from sweep_service.worker.pruning import select_layers

    with quiet_nni():  # NNI and torch.fx warn on import
        import nni.compression.pruning  # noqa: F401
        import nni.compression.speedup  # noqa: F401
    results: list[CheckResult] = []
    for model_name in models:
        torch.manual_seed(0)
        model = _with_trained_statistics(create_model(model_name, num_classes=NUM_CLASSES, weights="none").eval())
        layers = select_layers(model, model_name, LayerSelection().model_dump())
        for rate in rates:
            for result in _check_one(entry, model, model_name, layers, rate, image_size, time_limit_s):
                results.append(result)
                emit(result)
            if results and results[-1].timed_out:
                return results
    return results


class _TimedOut(Exception):
    pass


def _within(limit_s: float, fn: Callable, *args):
    """fn(*args), or _TimedOut if it has not returned after `limit_s`. It runs in a daemon
    thread, which Python cannot stop: after a timeout the caller checks nothing more, and
    the thread ends with the process."""
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=call, name="plugin-check", daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise _TimedOut
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _check_one(entry: PluginEntry, model: nn.Module, model_name: str, layers: list[str], rate: float,
               image_size: int, time_limit_s: float) -> Iterator[CheckResult]:
    import torch

    from sweep_service.plugins import filter_masks_from_scores
    from sweep_service.worker.pruning import (
        RATE_TOLERANCE,
        Choice,
        MaskError,
        ScoreError,
        check_fit,
        check_scores,
        masked_share,
    )

    def result(check: str, status: str, detail: str) -> CheckResult:
        return CheckResult(model_name, rate, check, status, detail)

    def skip_after(check: str, why: str) -> Iterator[CheckResult]:
        for later in CHECKS[CHECKS.index(check) + 1:]:
            yield result(later, SKIP, why)

    scoring = issubclass(entry.cls, ScoringPlugin)
    method = "scores()" if scoring else "masks()"
    torch.manual_seed(0)  # trials seed torch too; seeded plugins give the same output each run
    data = _calibration_batches(image_size) if entry.cls.needs_data else None
    start = time.perf_counter()
    try:
        plugin, copied = entry.create(), copy.deepcopy(model).eval()
        if scoring:
            output = _within(time_limit_s, plugin.scores, copied, list(layers), data)
        else:
            output = _within(time_limit_s, plugin.masks, copied, rate, list(layers), data)
    except _TimedOut:
        yield dataclasses.replace(result("runs", FAIL, f"{method} did not return within {time_limit_s:g} s"),
                                  timed_out=True)
        return
    except Exception as exc:
        yield result("runs", FAIL, f"{method} raised {type(exc).__name__}: {_first_line(exc)}")
        yield from skip_after("runs", f"no {'scores' if scoring else 'masks'}")
        return
    yield result("runs", PASS, f"{method} returned in {time.perf_counter() - start:.1f} s")

    try:
        if scoring:
            check_scores(model, output, layers)
            choice = Choice(scores={name: output[name].detach().float().flatten() for name in layers})
            masks = filter_masks_from_scores(model, layers, choice.scores, rate)
        else:
            check_fit(model, output, layers)
            choice, masks = Choice(masks=output), output
    except (MaskError, ScoreError) as exc:
        yield result("fit", FAIL, str(exc))
        yield from skip_after("fit", f"{'scores' if scoring else 'masks'} do not fit the model")
        return
    yield result("fit", PASS, f"scores for all {len(layers)} selected layers, one per output filter, finite and "
                              "non-negative" if scoring else
                 f"{len(masks)} masks, all for selected layers ({len(layers)} selected); shapes match the "
                 "parameters; values 0/1")
    # The same test as a trial's (check_masks): speedup removes only whole filters.
    masked, removable = masked_share(model, masks, layers)
    ok = abs(removable - rate) <= RATE_TOLERANCE
    yield result("rate", PASS if ok else FAIL,
                 f"masks remove {removable:.1%} of the selected layers' weights in whole filters, requested "
                 f"{rate:.0%} (tolerance ±{RATE_TOLERANCE * 100:.0f} points)")
    if masked > 0 and removable == 0:
        yield result("structure", FAIL, "no whole output filter is masked: speedup removes nothing and leaves "
                                        "the weights as they are, so a trial would measure the unpruned model")
    elif removable == masked:
        yield result("structure", PASS, "filter-structured: every masked weight is in a whole masked output filter")
    else:
        yield result("structure", WARN, f"{1 - removable / masked:.0%} of the masked weights are in output filters "
                                        "that stay: speedup leaves those weights as they are")
    speedup_result = _check_speedup(model, masks, image_size, removable > 0, result, time_limit_s)
    yield speedup_result
    if speedup_result.timed_out:
        return
    if not ok:
        yield result("grouped", SKIP, "the masks miss the rate, so a trial fails before grouping")
        return
    yield _check_grouped(model, layers, choice, rate, image_size, result, time_limit_s)


def _check_speedup(model: nn.Module, masks: Masks, image_size: int, removes_filters: bool,
                   result: Callable[[str, str, str], CheckResult], time_limit_s: float) -> CheckResult:
    import torch

    from sweep_service.worker.measure import count_params
    from sweep_service.worker.pruning import speedup

    pruned = copy.deepcopy(model)
    before = count_params(pruned)
    start = time.perf_counter()
    try:
        _within(time_limit_s, speedup, pruned, masks, image_size)
        took = time.perf_counter() - start
        with torch.no_grad():
            output = pruned.eval()(torch.rand(2, 3, image_size, image_size))
        if tuple(output.shape) != (2, NUM_CLASSES):
            return result("speedup", FAIL, f"the pruned model outputs shape {tuple(output.shape)}, "
                                           f"expected (2, {NUM_CLASSES})")
    except _TimedOut:
        return dataclasses.replace(result("speedup", FAIL, f"speedup did not return within {time_limit_s:g} s"),
                                   timed_out=True)
    except Exception as exc:
        return result("speedup", FAIL, f"{type(exc).__name__}: {_first_line(exc)}")
    after = count_params(pruned)
    change = f"params {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({after / before - 1:+.1%})"
    if removes_filters and after >= before:
        return result("speedup", FAIL,
                      f"ModelSpeedup ran but removed nothing although whole filters are masked; {change}")
    note = "" if removes_filters else " (no whole filter masked: nothing to remove)"
    return result("speedup", PASS, f"each layer's masks: ModelSpeedup ran in {took:.1f} s, forward OK; {change}{note}")


def _check_grouped(model: nn.Module, layers: list[str], choice, rate: float, image_size: int,
                   result: Callable[[str, str, str], CheckResult], time_limit_s: float) -> CheckResult:
    from sweep_service.worker.groups import channel_groups
    from sweep_service.worker.pruning import channel_sparsity, plan_pruning, prune_and_verify, pruned_channels

    pruned = copy.deepcopy(model)

    def prune_grouped():
        groups = channel_groups(pruned, layers, image_size)
        plan = plan_pruning(pruned, groups, choice, layers, rate, "dependency", "uniform")
        filters = {name: pruned.get_submodule(name).weight.shape[0] for name in layers}
        return groups, filters, prune_and_verify(pruned, groups, plan, image_size)

    try:
        groups, filters, difference = _within(time_limit_s, prune_grouped)
    except _TimedOut:
        return dataclasses.replace(result("grouped", FAIL, f"the grouped pruning did not return within "
                                                           f"{time_limit_s:g} s"), timed_out=True)
    except Exception as exc:
        return result("grouped", FAIL, f"{type(exc).__name__}: {_first_line(exc)}")
    blocked = sum(not g.prunable for g in groups)
    sparsity = channel_sparsity(pruned_channels(pruned, layers, filters))
    return result("grouped", PASS, f"{len(groups) - blocked} channel groups pruned ({blocked} blocked); "
                                   f"{sparsity:.1%} of the selected filters removed; sped-up = masked model "
                                   f"(largest logit difference {difference:.1g})")


def _with_trained_statistics(model: nn.Module) -> nn.Module:
    """Give every batch norm random statistics and affine parameters, as training leaves
    them: freshly initialised ones (mean 0, bias 0) output zero for a zeroed channel, so
    a channel kept where it should go would not show in the grouped check."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model


def _calibration_batches(image_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(CALIBRATION_BATCH_SIZE, 3, image_size, image_size, generator=generator),
             torch.randint(0, NUM_CLASSES, (CALIBRATION_BATCH_SIZE,), generator=generator))
            for _ in range(CALIBRATION_BATCHES)]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
