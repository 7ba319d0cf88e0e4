"""End to end on Docker Compose: build the image, run the smoke sweep on a Ray head and two
Ray worker containers, kill one worker in the middle, and check that every trial is
recorded exactly once, that trials ran in both workers, and that the results and the
report reach the host and the report server.

    pytest -m docker tests/e2e/test_compose.py -s

About 3 min with the image built; about 8 min on a cold machine (engine start, base image
with debootstrap, image build).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]

CONFIG = "configs/docker-smoke.yaml"
WORKERS = 2
REPORT_PORT = 8080
SWEEP_TIMEOUT_S = 15 * 60


# --- Docker fixtures: a running engine, the base image, the image, the compose command. ---
# Nothing here skips: a machine that cannot run Docker fails these tests with the reason,
# so that CI never passes them silently.
DOCKER_DIR = REPO / "docker"
IMAGE = os.environ.get("SWEEP_IMAGE", "sweep-service:0.1.0")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Git-ignored copy of the host's CA bundle in the build context (see docker/certs/README.md).
HOST_CA_COPY = DOCKER_DIR / "certs" / "host-ca-bundle.pem"


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
        check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repository root; on failure raise with its output."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)
    if check and proc.returncode != 0:
        output = (proc.stdout or "")[-6000:]
        raise AssertionError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{output}")
    return proc


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Install and start a Docker engine if none runs (docker/ensure-engine.sh)."""
    run(["sh", str(DOCKER_DIR / "ensure-engine.sh")], timeout=900)


@pytest.fixture(scope="session")
def compose(docker_engine) -> list[str]:
    """The compose command line: `docker compose` if the plugin exists, else docker-compose."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("neither `docker compose` nor `docker-compose` is installed "
                         "(docker/ensure-engine.sh installs docker-compose)")


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """debian:bookworm-slim, pulled or made offline (docker/make-base-image.sh)."""
    image = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")
    started = time.monotonic()
    out = run(["sh", str(DOCKER_DIR / "make-base-image.sh"), image], timeout=900).stdout
    print(f"\n{out.strip()} ({time.monotonic() - started:.0f} s)")
    return image


def _trust_host_cas() -> None:
    """Put a copy of the host's CA bundle into docker/certs/ (git-ignored), whose
    certificates the image trusts: pip in the build then trusts whatever the host trusts
    (this machine's pip goes through a TLS-intercepting proxy)."""
    if not HOST_CA_BUNDLE.is_file():
        return
    data = HOST_CA_BUNDLE.read_bytes()
    if not HOST_CA_COPY.is_file() or HOST_CA_COPY.read_bytes() != data:
        HOST_CA_COPY.write_bytes(data)  # rewritten only when it changed: keeps the build cache


@pytest.fixture(scope="session")
def sweep_image(compose, base_image) -> str:
    """The sweep-service image, built through compose (a no-op with a warm cache)."""
    if not os.environ.get("EXTRA_CA_BUNDLE"):  # the caller's choice wins
        _trust_host_cas()
    env = {**os.environ, "BASE_IMAGE": base_image, "SWEEP_IMAGE": IMAGE}
    started = time.monotonic()
    # One service is enough: all three use the same image.
    run([*compose, "-p", "sweepbuild", "build", "ray-head"], env=env, timeout=3600)
    print(f"\nimage {IMAGE} built in {time.monotonic() - started:.0f} s")
    # Rebuilds leave the previous image (~7 GB) and the requirements stage dangling: remove
    # only our own (they carry the image's title label).
    run(["docker", "image", "prune", "-f", "--filter", "label=org.opencontainers.image.title=sweep-service"],
        timeout=300, check=False)
    return IMAGE


def expected_trials(config_path: Path) -> int:
    """One baseline per model plus one pruned trial per model x pruner x rate."""
    config = yaml.safe_load(config_path.read_text())
    models, pruners, rates = config["models"], config["pruners"], config["rates"]
    return len(models) * (1 + len(pruners) * len(rates))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


_QUERY = """
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
con.row_factory = sqlite3.Row
con.execute("PRAGMA query_only = 1")
print(json.dumps([dict(r) for r in con.execute(sys.argv[2])]))
con.close()
"""


def query(db: Path, sql: str) -> list[dict]:
    """Rows of a query on a sweep database on the host, once its coordinator has ended.

    (While the coordinator runs, use Project.query: it reads inside the container as the
    database's owner, so that no -wal/-shm file of the WAL-mode database gets created by
    another user.)"""
    proc = subprocess.run([sys.executable, "-c", _QUERY, str(db), sql], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"query failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


class Project:
    """One compose project with its own name, results folder and volumes."""

    def __init__(self, compose: list[str], results: Path):
        self.compose = compose
        self.name = f"sweepe2e{uuid.uuid4().hex[:8]}"
        self.results = results
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.name,
            "SWEEP_CONFIG": CONFIG,
            "RESULTS_DIR": str(results),
            "REPORT_PORT": str(REPORT_PORT),
            "RAY_GCS_PORT": str(free_port()),
            "RAY_DASHBOARD_PORT": str(free_port()),
            "RAY_WORKER_CPUS": "1",
            # Results belong to the user running the test (the image's user when root).
            "SWEEP_UID": str(os.getuid() or 1000),
            "SWEEP_GID": str(os.getgid() or 1000),
        }

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.compose, "-p", self.name, *args], env=self.env, timeout=timeout, check=check)

    def containers(self, service: str) -> list[str]:
        out = run(["docker", "ps", "-a", "-q", "--no-trunc",
                   "--filter", f"label=com.docker.compose.project={self.name}",
                   "--filter", f"label=com.docker.compose.service={service}"], timeout=60).stdout
        return out.split()

    def query(self, container: str, sql: str) -> list[dict]:
        """Rows of a query on the running coordinator's database, read in its container."""
        proc = run(["docker", "exec", "-u", f"{self.env['SWEEP_UID']}:{self.env['SWEEP_GID']}",
                    container, "python", "-c", _QUERY, "/app/results/sweep.db", sql],
                   timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"query failed: {proc.stdout.strip()[-500:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])  # JSON is the last line

    def running_tasks(self, container: str) -> list[str]:
        """Ray task processes (titled `ray::<function>`) executing in a worker container."""
        script = ("import psutil\n"
                  "for p in psutil.process_iter(['cmdline']):\n"
                  "    title = ' '.join(p.info['cmdline'] or [])\n"
                  "    idle = ('ray::IDLE', 'ray::Dashboard', 'ray::RuntimeEnv')\n"
                  "    if title.startswith('ray::') and not title.startswith(idle):\n"
                  "        print(title)\n")
        proc = run(["docker", "exec", container, "python", "-c", script], timeout=60, check=False)
        return [t.strip() for t in proc.stdout.splitlines() if t.strip()] if proc.returncode == 0 else []

    def state(self, container: str) -> tuple[str, int]:
        out = run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container],
                  timeout=60).stdout.split()
        return out[0], int(out[1])

    def hostname(self, container: str) -> str:
        return run(["docker", "inspect", "-f", "{{.Config.Hostname}}", container], timeout=60).stdout.strip()

    def print_logs(self) -> None:
        """Compose logs of every service that failed (else of all), for the test report."""
        failing = []
        for service in ("ray-head", "ray-worker", "report"):
            for container in self.containers(service):
                status, code = self.state(container)
                if status not in ("running", "exited") or code != 0:
                    failing.append(service)
                    break
        for service in failing or ["ray-head", "ray-worker", "report"]:
            logs = self("logs", "--no-color", "--tail=150", service, check=False).stdout
            print(f"\n===== compose logs: {service} =====\n{logs}", file=sys.stderr)

    def down(self) -> None:
        self("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)


@contextmanager
def compose_project(compose: list[str], results: Path) -> Iterator[Project]:
    project = Project(compose, results)
    try:
        yield project
    except BaseException:
        try:
            project.print_logs()
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:  # keep the original failure
            print(f"(could not collect compose logs: {exc})", file=sys.stderr)
        raise
    finally:
        project.down()


def wait_for(predicate, *, timeout: float, interval: float = 2.0, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_sweep_on_compose_survives_a_killed_worker(compose, sweep_image, tmp_path):
    assert not port_in_use(REPORT_PORT), (
        f"127.0.0.1:{REPORT_PORT} is taken (another sweep's report service?): the test serves "
        "its report there")
    results = tmp_path / "results"
    results.mkdir()
    db = results / "sweep.db"
    n_trials = expected_trials(REPO / CONFIG)

    with compose_project(compose, results) as project:
        t0 = time.monotonic()
        project("up", "-d", "--no-build", "--scale", f"ray-worker={WORKERS}", timeout=600)
        (head,) = project.containers("ray-head")
        workers = project.containers("ray-worker")
        assert len(workers) == WORKERS
        worker_hosts = {project.hostname(c): c for c in workers}
        print(f"\ncompose up: {time.monotonic() - t0:.0f} s; workers {sorted(worker_hosts)}")

        def head_exited() -> bool:
            return project.state(head)[0] == "exited"

        # 1. Wait until completed trials came from both workers while others still wait, and
        #    pick a worker that is running a trial right now.
        def ready_to_kill():
            assert not head_exited(), "the coordinator ended before a worker could be killed"
            if not db.exists():
                return None
            try:
                rows = project.query(head, "SELECT status, worker_host FROM trials")
            except RuntimeError:
                return None  # schema not created yet, or the file is being set up
            done_on = {r["worker_host"] for r in rows if r["status"] == "completed"}
            left = n_trials - sum(r["status"] == "completed" for r in rows)
            if len(done_on & set(worker_hosts)) < 2:
                return None
            assert left >= 2, (
                f"only {left} trial(s) left when both workers had finished one: the smoke "
                "config is too small to kill a worker mid-sweep")
            for host in sorted(worker_hosts):
                tasks = [t for t in project.running_tasks(worker_hosts[host]) if t]
                if tasks:
                    return host, tasks, rows
            return None

        victim, tasks, rows = wait_for(ready_to_kill, timeout=SWEEP_TIMEOUT_S, interval=1,
                                       what="trials completed on both workers")
        statuses = {s: sum(r["status"] == s for r in rows) for s in ("completed", "running", "pending")}
        print(f"killing worker {victim} after {time.monotonic() - t0:.0f} s while it runs "
              f"{tasks}; trials: {statuses}")
        run(["docker", "kill", worker_hosts[victim]], timeout=60)
        done_by_victim = sum(r["status"] == "completed" and r["worker_host"] == victim for r in rows)

        # 2. The sweep still completes: the coordinator exits 0.
        wait_for(head_exited, timeout=SWEEP_TIMEOUT_S, interval=3, what="the coordinator to finish")
        _, code = project.state(head)
        summary = project("logs", "--no-color", "--tail=8", "ray-head", check=False).stdout
        print(f"coordinator exited {code} after {time.monotonic() - t0:.0f} s:\n{summary}")
        assert code == 0, "the coordinator (ray-head) failed"

        # 3. Every trial recorded exactly once, all completed, spread over both workers.
        rows = query(db, "SELECT sweep_id, key, kind, status, worker_host, allocator, error FROM trials")
        assert len({r["sweep_id"] for r in rows}) == 1
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)), "a trial is recorded twice"
        assert len(rows) == n_trials, f"{len(rows)} trials recorded, {n_trials} expected"
        not_done = [(r["key"], r["status"], r["error"]) for r in rows if r["status"] != "completed"]
        assert not not_done, f"trials not completed: {not_done}"
        ran_on = {r["worker_host"] for r in rows}
        assert ran_on <= set(worker_hosts), f"trials ran on {ran_on}, workers are {set(worker_hosts)}"
        assert len(ran_on) >= 2, f"all trials ran on {ran_on}"
        assert {r["allocator"] for r in rows} == {"tcmalloc"}  # the image's workers preload it
        # The killed worker's trial was retried on the other one; no result came from the dead.
        assert sum(r["worker_host"] == victim for r in rows) <= done_by_victim + 1  # +1: a result in flight

        # 4. The report service serves the charts.
        report_dir = results / "report"
        pngs = sorted(report_dir.glob("**/*.png"))
        assert (report_dir / "index.html").is_file() and pngs, f"no report in {report_dir}"
        base = f"http://127.0.0.1:{REPORT_PORT}"
        wait_for(lambda: project.state(project.containers("report")[0])[0] == "running",
                 timeout=60, what="the report service")
        code, html = http_get(f"{base}/index.html")
        assert code == 200
        linked = re.findall(r"""<img[^>]*\ssrc=["']([^"'?#]+\.png)[^"']*["']""", html.decode())
        assert linked, "index.html shows no PNG chart"
        code, png = http_get(f"{base}/{linked[0]}")
        assert code == 200 and png.startswith(b"\x89PNG\r\n\x1a\n"), f"{linked[0]} is not a PNG"

        # 5. `down` removes the containers but leaves the results on the host.
        project.down()
        assert not project.containers("ray-head")
    assert db.is_file() and (results / "report" / "index.html").is_file()
    assert query(db, "SELECT count(*) AS n FROM trials")[0]["n"] == n_trials
