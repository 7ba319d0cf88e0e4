"""The report server (sweep_service.report.serve) over real HTTP on a loopback port, and the
status file it reads (sweep_service.report.status)."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from sweep_service.report import status as sweep_status
from sweep_service.report.page import _relative_link
from sweep_service.report.serve import make_server
from sweep_service.report.status import FAILED, FINISHED, INTERRUPTED, RUNNING, SweepStatus, read_status

REPORT_HTML = b"<!doctype html><html><head><title>r</title></head><body class=x><h1>Sweep report</h1></body></html>"
STALE_AFTER_S = 60


def write_status(report_dir: Path, state: str, message: str = "", *, now: float | None = None) -> None:
    """status.json as the coordinator writes it (the fields the server reads, and others)."""
    now = time.time() if now is None else now
    fields = {"sweep_id": "s-1", "status": state, "updated_unix": now, "updated_at": "(iso)", "message": message,
              "stale_after_s": STALE_AFTER_S, "report_unix": None, "host": "h", "pid": 1}
    (report_dir / "status.json").write_text(json.dumps(fields))


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    path = tmp_path / "report"
    path.mkdir()
    return path


@pytest.fixture
def get(report_dir: Path):
    """GET a path from a server of `report_dir`: (status, headers, body)."""
    server = make_server(report_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def fetch(path: str, method: str = "GET"):
        request = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    yield fetch
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_before_any_sweep_the_page_says_no_report_yet(get):
    code, headers, body = get("/")
    assert code == 200
    assert b"No report yet" in body and b"No sweep has written" in body
    assert headers["Cache-Control"] == "no-cache"


def test_a_running_sweep_without_results_is_said_to_run_and_the_page_reloads(report_dir, get):
    write_status(report_dir, RUNNING)
    _, _, body = get("/")
    assert b"The sweep is running" in body
    assert b'http-equiv="refresh"' in body


def test_a_running_sweep_whose_heartbeat_stopped_is_not_claimed_live(report_dir, get):
    write_status(report_dir, RUNNING, now=time.time() - STALE_AFTER_S - 1)
    _, _, body = get("/")
    assert b"stopped reporting" in body and b"is running" not in body


def test_a_failed_sweep_shows_its_error_escaped(report_dir, get):
    write_status(report_dir, FAILED, "configs/x.yaml: rates: <b>1.5</b> is not in (0, 1)")
    code, _, body = get("/index.html")
    assert code == 200
    assert b"The last sweep failed" in body
    assert b"rates: &lt;b&gt;1.5&lt;/b&gt; is not in (0, 1)" in body


def test_the_report_is_served_as_it_is_once_drawn(report_dir, get):
    write_status(report_dir, FINISHED, now=time.time() - 10)
    (report_dir / "index.html").write_bytes(REPORT_HTML)
    (report_dir / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    assert get("/")[2] == REPORT_HTML
    code, headers, body = get("/chart.png")
    assert code == 200 and body.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"


def test_a_report_older_than_a_failed_sweep_is_shown_under_a_banner(report_dir, get):
    (report_dir / "index.html").write_bytes(REPORT_HTML)
    drawn = time.time() - 100
    os.utime(report_dir / "index.html", (drawn, drawn))
    write_status(report_dir, FAILED, "no such model: resnet19")
    body = get("/")[2]
    assert body.index(b"<body class=x>") < body.index(b"The last sweep failed") < body.index(b"Sweep report")
    assert b"no such model: resnet19" in body
    # A report drawn after the failure (the coordinator's own final report) needs no banner.
    write_status(report_dir, FAILED, "no such model: resnet19", now=drawn - 10)
    assert get("/")[2] == REPORT_HTML


def test_no_directory_listing_no_stock_404_no_hidden_files(report_dir, get):
    (report_dir / "charts").mkdir()
    (report_dir / "charts" / "a.png").write_bytes(b"png")
    (report_dir / ".status.json.tmp").write_bytes(b"{}")
    for path in ("/charts/", "/charts", "/missing.png", "/.status.json.tmp", "/../../etc/passwd", "/%2e%2e/x"):
        code, _, body = get(path)
        assert code == 404, path
        assert b"a.png" not in body and b"Directory listing" not in body and b"No such file in the report" in body
    assert get("/charts/a.png")[0] == 200
    assert get("/", method="HEAD")[0] == 200


def test_the_onnx_files_the_report_links_are_served_from_the_models_folder_beside_it(report_dir, get):
    models = report_dir.parent / "models"
    models.mkdir()
    (models / "resnet18-l1norm-30-int8.onnx").write_bytes(b"onnx bytes")
    (report_dir.parent / "sweep.db").write_bytes(b"not served")
    link = _relative_link(models / "resnet18-l1norm-30-int8.onnx", report_dir)
    assert link == "../models/resnet18-l1norm-30-int8.onnx"
    # What a browser asks for when it follows that link from the report at the site's root.
    path = urllib.parse.urlsplit(urllib.parse.urljoin("http://h/", link)).path
    code, _, body = get(path)
    assert (code, body) == (200, b"onnx bytes")
    for outside in ("/models/../sweep.db", "/models/%2e%2e/sweep.db", "/sweep.db", "/models/", "/models"):
        assert get(outside)[0] == 404, outside


def test_status_fields_and_unreadable_files(report_dir):
    assert read_status(report_dir) is None
    write_status(report_dir, INTERRUPTED, "stopped by SIGTERM", now=123.0)
    assert read_status(report_dir) == SweepStatus(INTERRUPTED, 123.0, "stopped by SIGTERM", STALE_AFTER_S)
    assert not read_status(report_dir).stale(now=10_000)  # only a running sweep goes stale
    for text in ("not json", '{"status": "exploded", "updated_unix": 1}', '{"status": "failed"}', "[1]"):
        (report_dir / "status.json").write_text(text)
        assert read_status(report_dir) is None, text


def test_the_message_is_taken_from_the_coordinators_stderr():
    stderr = ("2026-01-01 INFO something from a library\n"
              "error: configs/bad.yaml: rates.0: Input should be less than 1\n"
              "  (fix the config and run again)\n")
    assert sweep_status.message_from_stderr(stderr, 2) == (
        "configs/bad.yaml: rates.0: Input should be less than 1\n  (fix the config and run again)")
    frames = "".join(f"  frame {i}\n" for i in range(40))
    traceback = "Traceback (most recent call last):\n" + frames + "OSError: boom\n"
    kept = sweep_status.message_from_stderr(traceback, 1)
    assert kept.endswith("OSError: boom") and "frame 5\n" not in kept
    assert sweep_status.message_from_stderr("", 137) == "the coordinator exited with status 137 and printed no error"


def test_record_exit_keeps_a_final_state_the_coordinator_wrote(report_dir, tmp_path):
    started = time.time()
    write_status(report_dir, INTERRUPTED, now=started + 1)
    assert sweep_status.main(["record-exit", str(report_dir), "--since", str(started), "--exit-code", "130",
                              "--message", "x"]) == 0
    assert read_status(report_dir).state == INTERRUPTED

    # Its state from an earlier run, or a heartbeat of this run, is replaced.
    write_status(report_dir, RUNNING, now=started + 1)
    stderr = tmp_path / "stderr"
    stderr.write_text("error: configs/none.yaml: no such file\n")
    sweep_status.main(["record-exit", str(report_dir), "--since", str(started), "--exit-code", "2",
                       "--stderr", str(stderr)])
    recorded = read_status(report_dir)
    assert (recorded.state, recorded.message) == (FAILED, "configs/none.yaml: no such file")
    fields = json.loads((report_dir / "status.json").read_text())
    assert fields["sweep_id"] == "s-1" and fields["updated_at"].endswith("Z")  # the coordinator's other fields stay

    sweep_status.main(["record-exit", str(report_dir), "--since", str(time.time() + 5), "--exit-code", "143",
                       "--message", "stopped by SIGTERM", "--stopped"])
    recorded = read_status(report_dir)
    assert (recorded.state, recorded.message) == (INTERRUPTED, "stopped by SIGTERM")
