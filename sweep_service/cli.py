"""Command line: `python -m sweep_service COMMAND --help`.

Subcommands are registered by the module that owns them (`register(subparsers)`), and
each handler returns the process exit code.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from sweep_service.coordinator.config import ConfigError, parse_config, read_config_file


def _run(args: argparse.Namespace) -> int:
    """Exit status: 0 every trial ended (completed or failed), 1 the sweep could not run or
    finish (another coordinator runs it, data missing, no node can hold a trial...), 2 bad
    input (config, database path, resources beyond this machine), 128 + signal number when
    stopped by SIGINT or SIGTERM."""
    from sweep_service.coordinator import stopping

    overrides = {"database": args.db, "output_dir": args.out, "data_root": args.data_root,
                 "weights_dir": args.weights_dir, "repeats": args.repeats}
    with stopping.handled():
        try:
            config = parse_config(read_config_file(args.config), source=str(args.config), overrides=overrides)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            return 128 + stopping.stop_behind(exc).signum
        _warn_broken_plugins()
        from sweep_service.coordinator.lock import SweepLocked
        from sweep_service.coordinator.store import StoreError
        from sweep_service.coordinator.sweep import SweepAborted, run_sweep

        try:
            summary = run_sweep(config)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (SweepLocked, SweepAborted) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 1)
        except KeyboardInterrupt as exc:
            stop = stopping.stop_behind(exc)
            print(f"stopped by {stop}: the sweep is interrupted and its unfinished trials are pending; run "
                  f"`python -m sweep_service run {args.config}` again to resume", file=sys.stderr)
            return 128 + stop.signum
    return 0 if summary.ok else 1


def _warn_broken_plugins() -> None:
    """A plugin file that fails to import does not stop a sweep that does not use it (the
    config check names it if the sweep names an unknown pruner), but it is worth a line."""
    from sweep_service.plugins import load_plugins

    for problem in load_plugins().broken.values():
        print(f"warning: {problem}; its pruners are unavailable", file=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    from sweep_service.coordinator.lock import is_live
    from sweep_service.coordinator.store import StoreError, utcnow
    from sweep_service.report import fmt
    from sweep_service.report.recommend import accuracy_text
    from sweep_service.report.results import load_results

    try:
        if args.variants:
            from sweep_service.coordinator.measurement import summary_lines
            from sweep_service.coordinator.store import ResultStore

            with ResultStore.open_read_only(args.db) as store:
                print("\n".join(summary_lines(store, store.sweep(args.sweep)["sweep_id"])))
            return 0
        results = load_results(args.db, args.sweep)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sweep, holder = results.sweep, results.lock
    state = sweep["status"]
    if state == "running" and is_live(holder):
        age = (utcnow() - holder["heartbeat_at"]).total_seconds()
        state = f"running: pid {holder['pid']} on {holder['host']}, heartbeat {max(age, 0):.0f} s ago"
    elif state == "running":
        state = ("not running: its coordinator stopped without ending it"
                 + (f" (last heartbeat {holder['heartbeat_at']:%Y-%m-%d %H:%M:%S} UTC)" if holder else "")
                 + "; run it again to resume")
    several = len(results.seeds) > 1
    print(f"sweep {sweep['sweep_id']} ({state}), data: {sweep['dataset']}, weights: {sweep['weights']}")
    print("  " + ", ".join(f"{n} {status}" for status, n in results.counts.items()))
    for row in results.trials:
        seed = f"seed {row['seed']:<3} " if several else ""
        # A short-budget result (an adaptive sweep's rung) says how much of its fine-tune it had.
        budget = f" at {row['budget']:.0%}" if row["accuracy"] is not None and (row["budget"] or 1.0) < 1.0 else ""
        print(f"  {row['model']:<16} {row['pruner']:<10} {fmt.rate(row['rate']):>7}  {seed}{row['status']:<9} "
              f"acc {fmt.pct(row['accuracy']):>6}{budget}  params -{fmt.pct(row['param_reduction']):>6}  "
              f"{row['worker_host'] or ''}" + (f"  ({row['stop_reason']})" if row["stop_reason"] else ""))
    if not results.completed:
        return 0
    if not results.spread_measured:
        print(results.no_spread_reason() + (" (set `repeats: 3` in the config to measure it)"
                                            if len(results.seeds) < 2 else ""))
        return 0
    print("configurations (mean ± half-width of the 95 % interval over their seeds):")
    for row in results.summaries:
        pruner = "baseline" if row["kind"] == "baseline" else row["pruner"]
        print(f"  {row['model']:<16} {pruner:<10} {fmt.rate(row['rate']):>7}  {row['n']} seeds  "
              f"acc {accuracy_text(row):>14}  params -{fmt.pct(row['param_reduction']):>6}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from sweep_service.coordinator import measurement
    from sweep_service.coordinator.lock import SweepLock, SweepLocked
    from sweep_service.coordinator.store import ResultStore, StoreError

    if not Path(args.db).is_file():  # measuring writes, but never into a new database
        print(f"error: no results database at {args.db}; run a sweep first or pass --db", file=sys.stderr)
        return 2
    try:
        store = ResultStore(args.db)
        sweep = store.sweep(args.sweep)
        settings, image_size = measurement.stored_settings(sweep["config_json"])
        on = args.on if args.on is not None else settings.on
        measurement.check_reachable(on)
        if not measurement.measurable(store, sweep["sweep_id"]):
            raise measurement.MeasurementUnavailable(
                f"sweep {sweep['sweep_id']} has no variant files to measure (a sweep run before variants existed "
                "gets them when it is run again: `python -m sweep_service run CONFIG`)")
    except (StoreError, LookupError, measurement.MeasurementUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from sweep_service.coordinator.cluster import start_ray
    from sweep_service.quiet import silence_libraries

    silence_libraries()
    # The sweep's writer while it measures: never beside a coordinator running the same sweep.
    lock = SweepLock(store, sweep["sweep_id"])
    try:
        lock.acquire()
    except SweepLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            ray = start_ray()
        except Exception as exc:  # RAY_ADDRESS names no reachable cluster
            print(f"error: cannot join the Ray cluster at {os.environ.get('RAY_ADDRESS') or '(local)'}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        try:
            stage = measurement.run_stage(ray, store, sweep["sweep_id"], settings, image_size, on=on,
                                          wait_s=args.wait)
        except Exception as exc:  # no node came, or the measuring task failed
            print(f"error: not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            ray.shutdown()
    finally:
        lock.release()
    print("\n".join(measurement.summary_lines(store, sweep["sweep_id"])))
    print(f"measured {stage.variants} variants of sweep {sweep['sweep_id']} in {stage.seconds:.1f} s "
          f"(measurement run {stage.run_id})")
    earlier = measurement.agreement(store, sweep["sweep_id"], stage.run_id)
    if earlier:
        print(measurement.agreement_line(earlier))
    return 0


def _resource_name(text: str) -> str:
    from sweep_service.coordinator.config import RESOURCE_NAME

    if not re.fullmatch(RESOURCE_NAME, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Ray resource name (letters, digits, '_', '.', '-')")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


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
    run.add_argument("--repeats", type=int, metavar="N",
                     help="run every configuration with N seeds: seed, seed+1, ... (overrides `repeats`; "
                          "the sweep keeps its id, so a finished sweep gains the new seeds' trials)")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="show a sweep's trials and their status")
    status.add_argument("--db", type=Path, required=True, help="SQLite file of the sweep")
    status.add_argument("--sweep", help="sweep id (default: the latest)")
    status.add_argument("--variants", action="store_true",
                        help="list the trials' deployable variants with their latest measurements instead")
    status.set_defaults(func=_status)

    measure = sub.add_parser(
        "measure", help="measure latency and memory of a finished sweep's variants again (no retraining)",
        description="Run the measurement stage again on a finished sweep: every saved variant is measured "
                    "with the sweep's `measure` protocol, on one node held whole (see docs/edge.md). "
                    "Joins the Ray cluster at RAY_ADDRESS if set, else starts a local one.")
    measure.add_argument("--db", type=Path, required=True, help="SQLite file of the sweep")
    measure.add_argument("--sweep", help="sweep id (default: the latest)")
    measure.add_argument("--on", metavar="RESOURCE", type=_resource_name,
                         help="measure on a node offering this Ray custom resource (default: the config's measure.on)")
    measure.add_argument("--wait", type=_seconds, default=600.0, metavar="SECONDS",
                         help="how long to wait for such a node to join (default: 600)")
    measure.set_defaults(func=_measure)

    report_cli.register(sub)
    plugin_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `plugins list | head`
        sys.stderr.close()
        return 0
