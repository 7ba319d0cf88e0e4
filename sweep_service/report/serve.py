"""The report server of the Docker setup (the `report` service), usable anywhere:

    python -m sweep_service.report.serve results/report --port 8080

Serves a report folder read-only, with `Cache-Control: no-cache` (the coordinator rewrites
the files while a sweep runs) and never a directory listing, and under `/models/` the
sweep's `models` folder beside it (output_dir/models), which the report links its `.onnx`
files in as `../models/...` (from the site's root a browser asks for `/models/...`).

Where the report page is not there yet it says why, from `status.json` (see status.py): no
sweep has written here yet, the sweep is running, or the last sweep failed and with which
error. A report left by an earlier sweep is shown under a banner when the sweep after it
failed.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import html
import io
import posixpath
import sys
import time
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sweep_service.report.status import FAILED, INTERRUPTED, RUNNING, SweepStatus, read_status

INDEX = "index.html"
MODELS = "models"
REFRESH_S = 15


def _when(unix_time: float) -> str:
    return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_message(status: SweepStatus | None, *, now: float) -> tuple[str, str]:
    """(title, detail) of the page shown where there is no report."""
    if status is None:
        return ("No report yet", "No sweep has written to this results folder yet. The report "
                "appears here once a sweep has its first results.")
    if status.state == FAILED:
        return "The last sweep failed", status.message or "(no reason was recorded)"
    if status.stale(now):
        return ("No report yet", f"The sweep stopped reporting at {_when(status.updated)} without "
                "saying why (killed?). Run it again to resume it.")
    if status.state == RUNNING:
        return ("No report yet", f"The sweep is running (last heard from at {_when(status.updated)}); "
                "the report appears after its first results.")
    if status.state == INTERRUPTED:
        return ("No report yet", f"The last sweep was stopped at {_when(status.updated)} before "
                "its first results. Run it again to resume it."
                + (f"\n\n{status.message}" if status.message else ""))
    return "No report", f"The last sweep ended at {_when(status.updated)} without drawing a report."


def _page(title: str, body: str, *, reload: bool) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if reload else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{meta}'
            f"<title>{html.escape(title)}</title>"
            "<style>body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}"
            "pre{white-space:pre-wrap;background:#f6f6f6;padding:.8rem;border-radius:4px}</style>"
            f"</head><body>{body}</body></html>\n").encode()


def status_page(status: SweepStatus | None, *, now: float) -> bytes:
    title, detail = status_message(status, now=now)
    # It reloads itself: the answer changes when a sweep starts, reports or ends.
    return _page(title, f"<h1>{html.escape(title)}</h1><pre>{html.escape(detail)}</pre>", reload=True)


def failure_banner(status: SweepStatus) -> bytes:
    return (f'<div role="alert" style="background:#fde8e8;border:1px solid #e0a0a0;padding:.6rem .9rem;'
            f'margin:0 0 1rem;font:15px/1.45 system-ui,sans-serif">'
            f"<strong>The last sweep failed</strong> ({_when(status.updated)}); the report below is from "
            f"an earlier run.<pre style=\"white-space:pre-wrap;margin:.4rem 0 0\">"
            f"{html.escape(status.message)}</pre></div>").encode()


def with_banner(page: bytes, banner: bytes) -> bytes:
    """`page` with `banner` first in its body."""
    lower = page.lower()
    start = lower.find(b"<body")
    at = lower.find(b">", start) + 1 if start >= 0 else 0
    return page[:at] + banner + page[at:]


class ReportHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of files in the report folder and of the models beside it; `/` is the
    report's index.html or a status page."""

    server_version = "sweep-report"

    def __init__(self, *args, directory: str, **kwargs):
        super().__init__(*args, directory=directory, **kwargs)

    def send_head(self):
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        if path in ("/", "/" + INDEX):
            return self._index()
        if any(part.startswith(".") for part in path.split("/")):  # temporary files of atomic writes
            return self._not_found()
        if not Path(self.translate_path(self.path)).is_file():  # no directory listing, no stock 404
            return self._not_found()
        return super().send_head()

    def translate_path(self, path: str) -> str:
        parts = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(path).path)).strip("/").split("/")
        if parts[0] == MODELS and len(parts) > 1:  # normpath has removed every `..`
            return str(Path(self.directory).parent.joinpath(MODELS, *parts[1:]))
        return super().translate_path(path)

    def _index(self):
        report_dir = Path(self.directory)
        status = read_status(report_dir)
        try:
            index = report_dir / INDEX
            body, drawn_at = index.read_bytes(), index.stat().st_mtime
        except OSError:
            return self._send(HTTPStatus.OK, status_page(status, now=time.time()))
        if status is not None and status.state == FAILED and status.updated > drawn_at:
            body = with_banner(body, failure_banner(status))
        return self._send(HTTPStatus.OK, body)

    def _not_found(self):
        return self._send(HTTPStatus.NOT_FOUND, _page("Not found", "<h1>Not found</h1><p>No such file in the "
                                                      'report. <a href="/">The report</a></p>', reload=False))

    def _send(self, code: HTTPStatus, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):
        if self.client_address[0] != "127.0.0.1":  # the container's healthcheck asks from inside
            super().log_message(fmt, *args)


def make_server(report_dir: Path, host: str, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(ReportHandler, directory=str(report_dir))
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_service.report.serve",
                                     description="Serve a sweep's report folder over HTTP.")
    parser.add_argument("report_dir", type=Path, help="the report folder, e.g. results/report")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="default: 8080")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.report_dir, args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"serving {args.report_dir} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
