"""The `report`, `recommend` and `export` commands (registered by sweep_service.cli).

Each reads the results database alone. Heavy imports (matplotlib, torch) happen inside
the handlers, so that `--help` and the other commands stay quick.
"""
from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from pathlib import Path

from sweep_service.report import fmt
from sweep_service.spec import STATUSES
from sweep_service.worker.runtime import FORMATS

EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2


def _load(args: argparse.Namespace):
    """The sweep's results, or None after printing why they cannot be read."""
    from sweep_service.coordinator.store import StoreError
    from sweep_service.report.results import load_results

    try:
        return load_results(args.db, args.sweep)
    except (StoreError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def default_report_dir(results, db_path: Path) -> Path:
    """The sweep's own report folder (`output_dir`/report from its stored config), or
    `report/` beside the database if the config names none."""
    output_dir = results.config.get("output_dir")
    return Path(output_dir) / "report" if output_dir else Path(db_path).resolve().parent / "report"


def _report(args: argparse.Namespace) -> int:
    from sweep_service.report.page import write_report

    started = time.perf_counter()
    results = _load(args)
    if results is None:
        return EXIT_ERROR
    out = args.out or default_report_dir(results, args.db)
    try:
        index = write_report(args.db, out, sweep_id=results.sweep_id)
    except OSError as exc:
        print(f"error: cannot write the report to {out}: {exc}\n"
              "  (the default is the sweep's output_dir/report; pass --out DIR)", file=sys.stderr)
        return EXIT_ERROR
    counts = results.counts
    charts = len(list(Path(index.parent).glob("*.png")))
    print(f"report: {index}")
    print(f"  sweep {results.sweep_id} ({results.sweep.get('status')}): "
          + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; {charts} charts; written in {time.perf_counter() - started:.1f} s")
    print(f"  open it in a browser, or serve the folder: python -m http.server -d {index.parent} 8080")
    return EXIT_OK


def _recommend(args: argparse.Namespace) -> int:
    from sweep_service.report.recommend import Limits, recommend

    results = _load(args)
    if results is None:
        return EXIT_ERROR
    formats = tuple(dict.fromkeys(args.format or ()))
    if formats and not results.variants:
        print(f"error: sweep {results.sweep_id} made no deployable variants, so --format has nothing to choose "
              "from; add `quantize: [fp32, int8]` to its config and run it again (no retraining), or drop --format",
              file=sys.stderr)
        return EXIT_ERROR
    given = Limits(max_params=args.max_params, max_macs=args.max_macs, max_latency_ms=args.max_latency_ms,
                   max_size_mb=args.max_size_mb, min_accuracy=args.min_accuracy)
    answer = (recommend(results, given, source="from the command line", formats=formats) if given
              else recommend(results, formats=formats))
    print("\n".join(answer.lines(runners_up=args.top)))
    return EXIT_OK if answer.chosen is not None else EXIT_NO_MATCH


def _export(args: argparse.Namespace) -> int:
    from sweep_service.report.export import export_text

    fmt_name = args.format or ("json" if args.output and args.output.suffix.lower() == ".json" else "csv")
    if args.summary and fmt_name != "csv":
        print("error: --summary is for CSV (JSON always has a `summary` list beside the trials)", file=sys.stderr)
        return EXIT_ERROR
    if args.summary and args.status:
        print("error: --summary rows average completed trials: drop --status", file=sys.stderr)
        return EXIT_ERROR
    results = _load(args)
    if results is None:
        return EXIT_ERROR
    text = export_text(results, fmt_name, args.status, summary=args.summary)
    n = len(results.configurations) if args.summary else sum(
        1 for t in results.trials if args.status is None or t["status"] == args.status)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror or exc}; choose another --output",
                  file=sys.stderr)
            return EXIT_ERROR
        what = "configurations" if args.summary else "trials"
        print(f"wrote {n} {what} of sweep {results.sweep_id} as {fmt_name.upper()} to {args.output}",
              file=sys.stderr)
    return EXIT_OK


def _argtype(parse, name: str):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in its error message
    return convert


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} must be a positive number")
    return value


def _text(*paragraphs: str) -> str:
    """Paragraphs wrapped for a terminal (the formatter keeps line breaks as written)."""
    return "\n\n".join(textwrap.fill(p, 88) for p in paragraphs)


def register(subparsers) -> None:
    """Add `report`, `recommend` and `export` to the main parser's subcommands."""
    raw = argparse.RawDescriptionHelpFormatter

    report = subparsers.add_parser(
        "report", help="write the HTML report (charts + tables) of a sweep", formatter_class=raw,
        description=_text(
            "Write a static HTML report of a sweep from the results database alone: accuracy and "
            "parameter reduction vs pruning rate (a line per model, a panel per pruner), the "
            "pruners side by side per model, accuracy vs parameters / MACs / latency with the "
            "Pareto front, sortable tables of the best trial per model, the Pareto set and every "
            "completed trial, failed trials with their reason, and the sweep's data set, weights, "
            "config and library versions.",
            "Works on a running sweep too (the page then shows progress and reloads itself). The "
            "folder holds index.html, PNG charts and trials.csv with relative links: open it from "
            "disk or serve it with any static server."),
        epilog="example:\n  python -m sweep_service report --db results/sweep.db --out results/report")
    report.add_argument("--db", type=Path, required=True, help="SQLite results file of the sweep")
    report.add_argument("--out", type=Path, metavar="DIR", help="folder to write index.html and the charts into "
                                                 "(default: the sweep's output_dir/report, as stored "
                                                 "in the database)")
    report.add_argument("--sweep", help="sweep id (default: the latest sweep in the database)")
    report.set_defaults(func=_report)

    rec = subparsers.add_parser(
        "recommend", help="pick the most accurate trial within a device's limits", formatter_class=raw,
        description=_text(
            "Pick the most accurate completed trial (unpruned baselines included) that meets every "
            "limit given, and print why: its figures against each limit, how many trials each "
            "limit excluded, and the next best. When no trial fits, print which limit excluded "
            "most, which limit alone stands in the way, and the closest candidates.",
            "A sweep that made deployable variants (`quantize:` in its config) is answered among "
            "those: each (model, pruner, rate, format), its size the .onnx file's, its latency the "
            "median on the node that measured it (e.g. the edge device), its accuracy its own in "
            "ONNX Runtime; the answer names the format, the file and the measuring node.",
            "Limits given here replace those in the sweep config's `constraints`; with none given, "
            "the config's are used (and with none there, the most accurate trial is shown).",
            "Exit status: 0 a trial was found, 1 no trial meets the limits (or none has "
            "completed), 2 the database or sweep cannot be read."),
        epilog="examples:\n"
               "  python -m sweep_service recommend --db results/sweep.db --max-params 5M --min-accuracy 90%\n"
               "  python -m sweep_service recommend --db results/sweep.db --max-latency-ms 4 --max-size-mb 10\n"
               "  python -m sweep_service recommend --db results/edge.db --max-size-mb 2 --max-latency-ms 5 "
               "--format int8")
    rec.add_argument("--db", type=Path, required=True, help="SQLite results file of the sweep")
    rec.add_argument("--sweep", help="sweep id (default: the latest sweep in the database)")
    rec.add_argument("--max-params", type=_argtype(fmt.parse_count, "count"), metavar="N",
                     help="most parameters after pruning, e.g. 5000000, 5M or 500k")
    rec.add_argument("--max-macs", type=_argtype(fmt.parse_count, "count"), metavar="N",
                     help="most multiply-accumulates per image (at the sweep's image size), e.g. 300M")
    rec.add_argument("--max-latency-ms", type=_argtype(_positive_float, "milliseconds"), metavar="MS",
                     help="highest median CPU latency for one image, in milliseconds (of a variant: "
                          "on the node that measured it)")
    rec.add_argument("--max-size-mb", type=_argtype(_positive_float, "megabytes"), metavar="MB",
                     help="largest saved model file (of a variant: its .onnx file), in MB of 10^6 bytes")
    rec.add_argument("--format", action="append", choices=FORMATS, metavar="FORMAT",
                     help=f"only variants in this format ({', '.join(FORMATS)}); repeat for several")
    rec.add_argument("--min-accuracy", type=_argtype(fmt.parse_fraction, "accuracy"), metavar="F",
                     help="lowest top-1 accuracy, as a fraction (0.9) or a percent (90%%)")
    rec.add_argument("--top", type=int, default=3, metavar="N",
                     help="how many runners-up to list (default: 3)")
    rec.set_defaults(func=_recommend)

    export = subparsers.add_parser(
        "export", help="write a sweep's trials as CSV or JSON", formatter_class=raw,
        description=_text(
            "Write every trial of a sweep (one row each: model, pruner, rate, status, accuracy, "
            "baseline accuracy and drop, parameters, MACs, size, latency, phase timings, worker, "
            "error...) for spreadsheets and other tools. Fractions stay fractions (0.93 = 93%); "
            "times are ISO 8601 UTC. JSON adds the sweep's config, library versions and provenance, "
            "each trial's full spec, and a `summary` list: per configuration (model, pruner, rate), "
            "each figure's mean over the seeds and its 95% interval. --summary writes that list as CSV."),
        epilog="examples:\n"
               "  python -m sweep_service export --db results/sweep.db --format csv --output trials.csv\n"
               "  python -m sweep_service export --db results/sweep.db --format json | jq '.trials[0]'")
    export.add_argument("--db", type=Path, required=True, help="SQLite results file of the sweep")
    export.add_argument("--sweep", help="sweep id (default: the latest sweep in the database)")
    export.add_argument("--format", choices=("csv", "json"),
                        help="output format (default: json if --output ends in .json, else csv)")
    export.add_argument("--output", "-o", type=Path, metavar="FILE",
                        help="file to write, or - for standard output (the default)")
    export.add_argument("--status", choices=STATUSES,
                        help="only trials with this status (default: all)")
    export.add_argument("--summary", action="store_true",
                        help="CSV: a row per configuration (model, pruner, rate) instead of per trial: "
                             "the number of seeds, and each figure's mean and 95%% interval bounds "
                             "(empty with one seed)")
    export.set_defaults(func=_export)
