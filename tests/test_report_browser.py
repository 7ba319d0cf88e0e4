"""The report as a person sees it: served over HTTP, rendered by headless Chromium: the
seeded reference grid, and the smoke sweep run with three seeds (intervals and the
pairwise comparison of pruners, checked on a screenshot).

Uses Debian's `chromium` (no browser download). Skipped with the reason when it is
missing on a developer's machine; in CI (CI set) a missing browser is a failure, so
the test never passes there by not running.
"""
from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
import shutil
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from seed_db import copy_kept_report, seeded_copy

from sweep_service.cli import main

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
FAILED = [("googlenet", "fpgm", 0.8), ("densenet121", "l1norm", 0.7)]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]

# Added to index.html by the test server (the report itself is served unchanged
# otherwise): once the page has loaded, it records what the browser made of every
# image, counts the table rows, and sorts the trial table by accuracy as a user would.
CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth,
            height: img.naturalHeight};
  });
  var table = document.getElementById("trials");
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var col = headers.findIndex(function (th) { return th.textContent.trim() === "accuracy"; });
  headers[col].click();
  headers[col].click();  // second click: descending
  var values = Array.prototype.map.call(table.tBodies[0].rows, function (row) {
    return parseFloat(row.cells[col].getAttribute("data-v"));
  });
  var pairwise = document.getElementById("pairwise").getBoundingClientRect();
  var best = document.getElementById("best-table");
  var out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    images: images,
    rows: table.tBodies[0].rows.length,
    completedRows: table.querySelectorAll("tbody tr[data-status=completed]").length,
    failedRows: document.querySelectorAll("#failed-table tbody tr").length,
    sortedFirst: values[0], maxAccuracy: Math.max.apply(null, values),
    sortState: headers[col].getAttribute("aria-sort"),
    pairwiseRows: document.querySelectorAll("table.pairwise tbody tr").length,
    pairwiseBox: {top: pairwise.top + window.scrollY, bottom: pairwise.bottom + window.scrollY,
                  left: pairwise.left, right: pairwise.right},
    bestAccuracies: Array.prototype.map.call(best.tBodies[0].rows, function (row) {
      return row.cells[4].textContent.trim();
    }),
    spreadNote: document.getElementById("spread-note").textContent
  });
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail("chromium is not installed, and CI must run this test: install Debian's "
                    "`chromium` package (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI runs this test")


class _Handler(SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]]

    def do_GET(self):
        if self.path.split("?")[0] in ("/", "/index.html"):
            page = (Path(self.directory) / "index.html").read_text()
            body = page.replace("</body>", CHECK_SCRIPT + "</body>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.requests.append((self.path, 200))
            return
        super().do_GET()

    def log_request(self, code="-", size="-"):
        if self.path.split("?")[0] not in ("/", "/index.html"):
            self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def _serve(report: Path):
    """Serve a report folder on 127.0.0.1, recording the requests."""
    requests: list[tuple[str, int]] = []
    handler = functools.partial(type("Handler", (_Handler,), {"requests": requests}), directory=str(report))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield dict(url=f"http://127.0.0.1:{server.server_address[1]}/index.html", report=report, requests=requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The full reference grid's report, written by the CLI and served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("browser")
    db, _ = seeded_copy(root, failed=FAILED)
    # The charts test_report.py drew for the same data, if it ran: the CLI then finds
    # them up to date and writes the page alone.
    copy_kept_report("reference", root / "report")
    assert main(["report", "--db", str(db), "--out", str(root / "report")]) == 0
    with _serve(root / "report") as server:
        yield dict(server, root=root)


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.Popen:
    profile.mkdir(parents=True)
    return subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> str:
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"chromium ({what}) did not finish in 90 s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"chromium ({what}) exited {proc.returncode}:\n{err[-3000:]}"
    return out


def _check(dom: str) -> dict:
    match = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert match, "the page's load event never ran the check:\n" + dom[-2000:]
    return json.loads(html.unescape(match.group(1)))


def test_report_renders_in_chromium(served, tmp_path):
    binary = chromium()
    shot = tmp_path / "report.png"
    # Both at once: chromium takes a few seconds to start here.
    dom_proc = _chromium(binary, tmp_path / "profile-dom", "--window-size=1400,3000", "--dump-dom",
                         served["url"])
    shot_proc = _chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}",
                          "--window-size=1400,3000", served["url"])
    dom = _finish(dom_proc, "--dump-dom")
    _finish(shot_proc, "--screenshot")
    check = _check(dom)

    pngs = sorted(p.name for p in served["report"].glob("*.png"))
    assert len(check["images"]) == len(pngs) == 14
    broken = [img for img in check["images"] if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert all(img["width"] >= 700 for img in check["images"])
    served_pngs = {path.split("?")[0].lstrip("/") for path, code in served["requests"] if code == 200}
    assert set(pngs) <= served_pngs

    completed = 7 + 7 * 3 * 8 - len(FAILED)
    assert check["rows"] == check["completedRows"] == completed
    assert check["failedRows"] == len(FAILED)
    assert check["sortState"] == "descending"
    assert check["sortedFirst"] == check["maxAccuracy"]

    assert shot.is_file() and shot.stat().st_size > 50_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report-screenshot.png")
    (ARTIFACTS / "report-dom.html").write_text(dom)


@pytest.mark.slow
def test_report_with_three_seeds_shows_intervals_and_the_pairwise_table(smoke_three_seeds, tmp_path):
    """The smoke sweep run with three seeds on a fresh clone: every chart loads, the best
    configurations read mean ± half-width, and the pairwise table is on screen (a crop of
    the screenshot where the browser laid it out holds text, not a blank)."""
    binary = chromium()
    with _serve(smoke_three_seeds["report"]) as server:
        check = _check(_finish(_chromium(binary, tmp_path / "profile-dom", "--window-size=1400,3000",
                                         "--dump-dom", server["url"]), "--dump-dom"))
        box = check["pairwiseBox"]
        height = min(int(box["bottom"]) + 40, 16000)
        shot = tmp_path / "seeds.png"
        _finish(_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}",
                          f"--window-size=1400,{height}", server["url"]), "--screenshot")

    pngs = sorted(p.name for p in smoke_three_seeds["report"].glob("*.png"))
    assert len(check["images"]) == len(pngs) >= 5
    assert all(img["complete"] and img["width"] >= 700 for img in check["images"]), check["images"]
    assert check["rows"] == 42 and check["failedRows"] == 0
    assert check["pairwiseRows"] == 2 * 2 * 3  # two models, two rates, three pairs of pruners
    assert len(check["bestAccuracies"]) == 2 and all(" ± " in a for a in check["bestAccuracies"])
    assert "ran with 3 seeds" in check["spreadNote"]

    with Image.open(shot) as image:
        assert image.size == (1400, height)
        table = image.convert("L").crop((int(box["left"]), int(box["top"]), int(box["right"]), int(box["bottom"])))
        dark = sum(table.histogram()[:128])
    assert dark > 2000, f"the pairwise table's area of the screenshot is nearly blank ({dark} dark pixels)"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report-seeds-screenshot.png")


class _LiveHandler(SimpleHTTPRequestHandler):
    """Serves a report folder; counts the page's loads, and from the second load on serves
    the page as the coordinator's next redraw would be (written after the one first served)."""

    loads: list[float]
    redrawn_at: float

    def do_GET(self):
        if self.path.split("?")[0] in ("/", "/index.html"):
            page = (Path(self.directory) / "index.html").read_text()
            if self.loads:
                page = re.sub(r'"generated": [0-9.]+', f'"generated": {self.redrawn_at + 1}', page)
            self.loads.append(time.time())
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("state, expected, loads", [
    # the coordinator was killed: status.json stays "running", its heartbeat goes stale
    ("stale", "not running since 2026-01-02T03:04:05Z: its coordinator stopped without ending the sweep", 1),
    ("interrupted", "not running since 2026-01-02T03:04:05Z: the sweep is interrupted (stopped by SIGTERM)", 1),
    # alive, and a report newer than the page: the page reloads, once, and keeps watching
    ("redrawn", "the sweep is running: this page reloads itself as results come in", 2),
])
def test_a_live_page_follows_the_coordinators_status_file(tmp_path, state, expected, loads):
    from seed_db import seed_sweep

    binary = chromium()
    db = tmp_path / "r.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=1, running=1, status="running")
    folder = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(folder)]) == 0
    now = time.time()
    status = {"sweep_id": json.loads(re.search(r"var live = (\{.*?\});", (folder / "index.html").read_text())
                                     .group(1))["sweep"],
              "status": "running", "updated_at": "2026-01-02T03:04:05Z", "updated_unix": now, "stale_after_s": 60,
              "report_unix": None, "message": "", "host": "h", "pid": 1}
    if state == "stale":
        status["updated_unix"] = now - 3600
    elif state == "interrupted":
        status.update(status="interrupted", message="stopped by SIGTERM")
    else:
        status["report_unix"] = now + 5
    (folder / "status.json").write_text(json.dumps(status))

    handler = functools.partial(type("Handler", (_LiveHandler,), {"loads": [], "redrawn_at": now + 5}),
                                directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = _finish(_chromium(binary, tmp_path / "profile", "--virtual-time-budget=8000", "--dump-dom",
                                f"http://127.0.0.1:{server.server_address[1]}/index.html"), "--dump-dom")
        served = len(handler.func.loads)
    finally:
        server.shutdown()
        server.server_close()
    note = re.search(r'<span id="live-status"[^>]*>(.*?)</span>', dom, re.S)
    assert note, dom[-2000:]
    assert html.unescape(note.group(1)).startswith(expected), note.group(1)
    assert served == loads
