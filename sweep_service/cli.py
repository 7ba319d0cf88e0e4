"""Command line: `python -m sweep_service COMMAND --help`.

Subcommands are registered by the module that owns them (`register(subparsers)`), and
each handler returns the process exit code.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sweep_service.config import ConfigError, SweepConfig, parse_config, read_config_file
from sweep_service.startup import imports_outside_gc


def _run(args: argparse.Namespace) -> int:
    from sweep_service.report.helper import start_chart_helper

    # First thing: its imports use the core that this process's own leave idle.
    chart_helper = start_chart_helper()
    try:
        return _run_sweep(args, chart_helper)
    finally:
        if chart_helper is not None:
            chart_helper.shutdown(cancel_futures=True)


def _run_sweep(args: argparse.Namespace, chart_helper) -> int:
    from sweep_service.ray_settings import start_ray

    overrides = {"database": args.db, "output_dir": args.out, "data_root": args.data_root,
                 "weights_dir": args.weights_dir}
    try:
        data = read_config_file(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Ray's start (about 1.6 s for a local cluster, most of it waiting for Ray's own processes)
    # and the config's checks (about 1 s, most of it importing torch, which the model zoo and
    # the pruner plugins need) overlap: the checks in a thread, Ray in this one, since Ray
    # ties its processes' lives to the thread that starts them. The checks begin once Ray's
    # processes are launched: begun with the command, they held this process's interpreter
    # lock while Ray's start needed it, and the baselines began training 0.3 s later (4.2-4.8
    # against 4.0-4.4 s after the command's start, four small sweeps each), while a bad
    # config's error came no sooner (1.5-1.8 s). A config that fails its checks is reported
    # at once and ends the command, with exit code 2, before anything is recorded or run.
    launched = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="config-checks") as checks:
        checked = checks.submit(_checked_config, data, str(args.config), overrides, launched)
        checked.add_done_callback(_report_config_error)
        try:
            ray = start_ray(on_launch=launched.set)
        finally:
            launched.set()
        if isinstance(checked.exception(), ConfigError):
            ray.shutdown()
            return 2
        config = checked.result()
    from sweep_service.coordinator import SweepAborted, run_sweep

    try:
        summary = run_sweep(config, ray=ray, chart_helper=chart_helper)
    except SweepAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if summary.ok else 1


def _report_config_error(checked: Future) -> None:
    if isinstance(checked.exception(), ConfigError):
        print(f"error: {checked.exception()}", file=sys.stderr, flush=True)


def _checked_config(data, source: str, overrides: dict, begin: threading.Event) -> SweepConfig:
    """The validated config, and the coordinator's imports (torch among them, with the
    plugins), once `begin` is set."""
    begin.wait()
    with imports_outside_gc():
        config = parse_config(data, source=source, overrides=overrides)
        import sweep_service.coordinator  # noqa: F401
    return config


def _status(args: argparse.Namespace) -> int:
    from sweep_service.store import ResultStore

    try:
        store = ResultStore.open_existing(args.db)
        sweep = store.sweep(args.sweep)
    except (FileNotFoundError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = store.counts(sweep["sweep_id"])
    print(f"sweep {sweep['sweep_id']} ({sweep['status']}), data: {sweep['dataset']}, weights: {sweep['weights']}")
    print("  " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for row in store.trials(sweep["sweep_id"]):
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "-"
        reduction = f"{row['param_reduction']:.1%}" if row["param_reduction"] is not None else "-"
        where = row["worker_host"] or ""
        print(f"  {row['model']:<16} {row['pruner']:<10} {row['rate']:>4.0%}  {row['status']:<9} "
              f"acc {accuracy:>6}  params -{reduction:>6}  {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sweep_service import plugin_cli
    from sweep_service.report import cli as report_cli

    parser = argparse.ArgumentParser(
        prog="python -m sweep_service",
        description="Sweep pretrained CNNs x pruning algorithms x pruning rates on Ray; "
                    "results go to SQLite and comparison charts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run (or resume) the sweep a YAML config describes",
                         description="Run a sweep. Completed trials of the same config are not run "
                                     "again. Joins the Ray cluster at RAY_ADDRESS if set, else "
                                     "starts a local one.")
    run.add_argument("config", type=Path, help="sweep config (YAML), e.g. configs/smoke.yaml")
    run.add_argument("--db", type=Path, help="SQLite file (overrides the config's `database`)")
    run.add_argument("--out", type=Path, help="output folder for models and the report (overrides `output_dir`)")
    run.add_argument("--data-root", type=Path, help="data set folder (overrides `data_root`)")
    run.add_argument("--weights-dir", type=Path, help="pretrained weights cache (overrides `weights_dir`)")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="show a sweep's trials and their status")
    status.add_argument("--db", type=Path, required=True, help="SQLite file of the sweep")
    status.add_argument("--sweep", help="sweep id (default: the latest)")
    status.set_defaults(func=_status)

    report_cli.register(sub)
    plugin_cli.register(sub)
    return parser


def main(argv: list[str] | None = None, *, exit_process: bool = False) -> int:
    """Run a command; returns its exit code. With `exit_process` (`python -m sweep_service`),
    a `run` ends its process itself once its output is flushed, without Python's teardown
    of the modules torch, NNI and Ray leave (0.25-0.3 s after every sweep here): by then
    every file the sweep wrote is closed, Ray is stopped and the chart helper has ended."""
    with imports_outside_gc():  # the subcommands' modules, torch among them
        parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except BrokenPipeError:  # e.g. `plugins list | head`
        sys.stderr.close()
        return 0
    if exit_process and args.func is _run:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
