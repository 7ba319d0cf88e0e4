"""End to end on Docker Compose, run as docs/docker.md tells users to run it.

- The image runs every process as the sweep's user (tini as PID 1 too); SWEEP_UID=0 runs
  as root and says so; a bad SWEEP_UID is refused.
- `docker compose up --exit-code-from ray-head` with a bad or missing SWEEP_CONFIG prints
  the coordinator's (or the entrypoint's) message and exits non-zero within a minute; the
  report page says that the last sweep failed, and why.
- A sweep on a head, two workers and the `edge` node of the compose profile `edge` (1 CPU,
  limited memory, no CPU for trials) survives, in turn: the head killed and `up` run again
  at once (the workers, still running, rejoin the new head), a worker killed while it runs
  a trial (the trial is retried on the other), and `docker compose stop` (the sweep is left
  interrupted). The README's `up` then finishes it: every trial recorded exactly once, none
  completed twice, every variant measured on the edge node and every measurement row naming
  it, results and report on the host and served.

    pytest -m docker tests/e2e/test_compose.py -s

The engine is driven through the `docker` SDK; compose through its command line, as users
do (`docker compose` if the plugin is there, else docker-compose 1.29). About 5 min with
the image built; about 10 min on a cold machine (engine start, base image with
debootstrap, image build).
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

import docker
import pytest
import requests
import yaml
from docker.models.containers import Container

pytestmark = [pytest.mark.slow, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]

SMOKE_CONFIG = REPO / "configs" / "docker-smoke.yaml"
# The sweep of the long test: the smoke config with more rates (19 trials of 3-10 s), so that
# trials are still left after each of the losses the test inflicts.
SWEEP_RATES = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
WORKERS = 2
SWEEP_TIMEOUT_S = 15 * 60
# The `edge` node of compose.yaml's profile `edge`: what it is limited to.
EDGE_CPUS, EDGE_MEMORY = 1, 4 * 2**30
# docs/docker.md's command: runs the sweep and exits with the coordinator's status.
README_UP = ("up", "--exit-code-from", "ray-head")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- Docker fixtures: a running engine, the base image, the image, the compose command. ---
# Nothing here skips: a machine that cannot run Docker fails these tests with the reason,
# so that CI never passes them silently.
DOCKER_DIR = REPO / "docker"
IMAGE = os.environ.get("SWEEP_IMAGE", "sweep-service:0.1.0")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Git-ignored copy of the host's CA bundle in the build context (see docker/certs/README.md).
HOST_CA_COPY = DOCKER_DIR / "certs" / "host-ca-bundle.pem"
# The results' owner in the containers: the user running the test (the image's user when root).
SWEEP_UID, SWEEP_GID = os.getuid() or 1000, os.getgid() or 1000


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repository root, output captured; on failure raise with it."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, text=True, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Install and start a Docker engine if none runs (docker/ensure-engine.sh)."""
    run(["sh", str(DOCKER_DIR / "ensure-engine.sh")], timeout=900)


@pytest.fixture(scope="session")
def client(docker_engine) -> Iterator[docker.DockerClient]:
    engine = docker.from_env(timeout=120)
    yield engine
    engine.close()


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
def sweep_image(compose, client, base_image) -> str:
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
    client.images.prune(filters={"dangling": True, "label": "org.opencontainers.image.title=sweep-service"})
    return IMAGE


# --- helpers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def http_get_when_up(url: str) -> tuple[int, bytes]:
    def get():
        try:
            return http_get(url)
        except OSError:  # not listening yet
            return None

    return wait_for(get, timeout=60, what=f"a server at {url}")


def write_configs(folder: Path) -> None:
    """The test's configs folder (CONFIGS_DIR): the smoke sweep with more rates, and one that
    the config schema refuses."""
    folder.mkdir()
    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    (folder / "sweep.yaml").write_text(yaml.safe_dump({**config, "name": "e2e", "rates": SWEEP_RATES,
                                                       "measure": {"on": "edge"}}))
    (folder / "bad.yaml").write_text(yaml.safe_dump({**config, "rates": [0.3, 1.5]}))


def expected_trials(config_path: Path) -> int:
    """One baseline per model plus one pruned trial per model x pruner x rate."""
    config = yaml.safe_load(config_path.read_text())
    return len(config["models"]) * (1 + len(config["pruners"]) * len(config["rates"]))


# Rows of a query on the sweep database, read where the database lives, as its owner (so
# that no -wal/-shm file of the WAL-mode database gets another owner), read-only.
_QUERY = """
import json, sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
con.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in con.execute(sys.argv[2])]))
con.close()
"""
DB_IN_CONTAINER = "/app/results/sweep.db"
TRIALS_SQL = "SELECT key, status, worker_host, attempts, accuracy, finished_at, error FROM trials"


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def completed(rows: list[dict]) -> dict[str, tuple]:
    """What a completed trial's row says about its run: recomputing it would change it."""
    return {r["key"]: (r["finished_at"], r["worker_host"], r["accuracy"]) for r in rows if r["status"] == "completed"}


class Project:
    """One compose project with its own name, ports, configs and results folder."""

    def __init__(self, compose: list[str], client: docker.DockerClient, results: Path, configs: Path, config: str):
        self.compose = compose
        self.client = client
        self.name = f"sweepe2e{uuid.uuid4().hex[:8]}"
        self.results = results
        report_port = free_port()
        self.report_url = f"http://127.0.0.1:{report_port}/"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.name,
            "SWEEP_IMAGE": IMAGE,
            "CONFIGS_DIR": str(configs),
            "SWEEP_CONFIG": config,
            "RESULTS_DIR": str(results),
            "REPORT_PORT": str(report_port),
            "RAY_GCS_PORT": str(free_port()),
            "RAY_DASHBOARD_PORT": str(free_port()),
            "RAY_WORKER_CPUS": "1",
            "SWEEP_UID": str(SWEEP_UID),
            "SWEEP_GID": str(SWEEP_GID),
        }

    def __call__(self, *args: str, timeout: float = 600, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        proc = run([*self.compose, "-p", self.name, *args], env={**self.env, **env}, timeout=timeout, check=check)
        proc.stdout = ANSI_ESCAPE.sub("", proc.stdout)  # compose colours each service's lines
        return proc

    def containers(self, service: str | None = None) -> list[Container]:
        labels = [f"com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=True, filters={"label": labels})

    def container(self, service: str) -> Container:
        (container,) = self.containers(service)
        return container

    def python(self, container: Container, script: str, *args: str) -> str | None:
        """stdout of a Python script run in a running container as the sweep's user, or None
        if the container does not run or the script fails."""
        try:
            code, output = container.exec_run(["python", "-c", script, *args], user=f"{SWEEP_UID}:{SWEEP_GID}",
                                              demux=True)
        except docker.errors.APIError:  # not running (any more, or yet)
            return None
        return output[0].decode() if code == 0 and output[0] else None

    def query(self, container: Container, sql: str) -> list[dict] | None:
        """Rows of a query on the database of a running coordinator, or None if it cannot be
        read yet (no file, no schema) or the container does not run."""
        out = self.python(container, _QUERY, DB_IN_CONTAINER, sql)
        return json.loads(out) if out else None

    def query_stored(self, sql: str) -> list[dict]:
        """Rows of a query on the database while no coordinator runs: in a throwaway container."""
        out = self.client.containers.run(IMAGE, ["python", "-c", _QUERY, DB_IN_CONTAINER, sql], remove=True,
                                         environment={"SWEEP_UID": str(SWEEP_UID), "SWEEP_GID": str(SWEEP_GID)},
                                         volumes={str(self.results): {"bind": "/app/results", "mode": "rw"}})
        return json.loads(out.decode())

    def running_tasks(self, container: Container) -> list[str]:
        """Ray task processes (titled `ray::<function>`) executing in a worker container."""
        script = ("import psutil\n"
                  "for p in psutil.process_iter(['cmdline']):\n"
                  "    title = ' '.join(p.info['cmdline'] or [])\n"
                  "    idle = ('ray::IDLE', 'ray::Dashboard', 'ray::RuntimeEnv')\n"
                  "    if title.startswith('ray::') and not title.startswith(idle):\n"
                  "        print(title)\n")
        return (self.python(container, script) or "").split("\n")[:-1]

    @staticmethod
    def state(container: Container) -> tuple[str, int]:
        container.reload()
        return container.status, container.attrs["State"]["ExitCode"]

    def print_logs(self) -> None:
        """The last lines of every container's log, for the test report."""
        for container in self.containers():
            logs = container.logs(tail=150).decode(errors="replace")
            print(f"\n===== {container.name} {self.state(container)} =====\n{logs}", file=sys.stderr)

    def down(self) -> None:
        # The report service is in a profile: name it, or `down` leaves it running.
        self("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300,
             COMPOSE_PROFILES="report,edge")


@contextmanager
def compose_project(compose, client, tmp_path: Path, config: str) -> Iterator[Project]:
    results = tmp_path / "results"
    results.mkdir()
    write_configs(tmp_path / "configs")
    project = Project(compose, client, results, tmp_path / "configs", config)
    try:
        yield project
    except BaseException:
        try:
            project.print_logs()
        except (docker.errors.DockerException, requests.RequestException) as exc:  # keep the original failure
            print(f"(could not collect the containers' logs: {exc})", file=sys.stderr)
        raise
    finally:
        project.down()


def root_processes(container: Container) -> list[str]:
    """The processes of a container that run as root, but for the moments a healthcheck or
    an exec starts (runc's own `runc init`) and drops root (the entrypoint, then setpriv)."""
    top = container.top(ps_args="-eo pid,uid,args")
    uid, args = top["Titles"].index("UID"), top["Titles"].index("COMMAND")
    transient = ("runc init", "/bin/sh /usr/local/bin/sweep-entrypoint health", "setpriv ")
    return [p[args] for p in top["Processes"] if p[uid] == "0" and not p[args].startswith(transient)]


# --- the tests -------------------------------------------------------------------------------
def test_the_image_runs_as_the_sweeps_user_and_as_root_only_when_asked(client, sweep_image):
    def run_image(command: list[str], **env: str) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of the image run with `command`."""
        container = client.containers.run(sweep_image, command, environment=env, detach=True)
        try:
            try:
                code = container.wait(timeout=30)["StatusCode"]
            except requests.RequestException:
                raise AssertionError(f"`{' '.join(command)}` with {env} did not end within 30 s") from None
            return code, container.logs(stderr=False).decode(), container.logs(stdout=False).decode()
        finally:
            container.remove(force=True)

    ids = ["sh", "-c", "id -u; awk '/^Uid:/ {print $2}' /proc/1/status; cat /proc/1/comm"]  # its uid, PID 1's
    assert run_image(ids)[:2] == (0, "1000\n1000\ntini\n")
    code, out, err = run_image(ids, SWEEP_UID="4242", SWEEP_GID="4242")
    assert (code, out) == (0, "4242\n4242\ntini\n") and "making /app/results writable for 4242:4242" in err

    code, out, err = run_image(ids, SWEEP_UID="0", SWEEP_GID="0")
    assert (code, out) == (0, "0\n0\ntini\n") and "SWEEP_UID=0: every process runs as root" in err
    code, out, _ = run_image(["help"], SWEEP_UID="0", SWEEP_GID="0")  # once looped forever, printing nothing
    assert code == 0 and "Roles of the sweep-service image" in out

    code, _, err = run_image(["help"], SWEEP_UID="root")
    assert code == 2 and "SWEEP_UID=root is not a numeric id" in err


def test_up_with_a_bad_config_prints_why_and_fails_within_a_minute(compose, client, sweep_image, tmp_path):
    with compose_project(compose, client, tmp_path, "configs/bad.yaml") as project:
        project("up", "-d", "report")

        started = time.monotonic()
        proc = project(*README_UP, check=False, timeout=300)
        took = time.monotonic() - started
        print(f"\n`up` with a bad config: exit {proc.returncode} after {took:.0f} s")
        errors = [line for line in proc.stdout.splitlines() if re.search(r"\|\s*error: invalid config", line)]
        assert errors and "configs/bad.yaml" in errors[0], f"the config error is not in up's output:\n{proc.stdout}"
        assert "rates" in proc.stdout.split(errors[0], 1)[1], proc.stdout  # the field at fault
        assert proc.returncode == 2, proc.stdout  # the coordinator's status for bad input
        assert took < 60

        project("up", "-d", "report")  # docker-compose 1.29 stops it with the head; v2 leaves it running
        code, page = http_get_when_up(project.report_url)
        assert code == 200 and b"The last sweep failed" in page and b"invalid config configs/bad.yaml" in page

        started = time.monotonic()
        proc = project(*README_UP, check=False, timeout=300, SWEEP_CONFIG="configs/missing.yaml")
        assert proc.returncode == 2 and time.monotonic() - started < 60
        assert "SWEEP_CONFIG=configs/missing.yaml: no such file" in proc.stdout, proc.stdout
        project("up", "-d", "report")
        assert b"configs/missing.yaml: no such file" in http_get_when_up(project.report_url)[1]


def test_a_sweep_survives_a_lost_head_a_lost_worker_and_a_stop(compose, client, sweep_image, tmp_path):
    with compose_project(compose, client, tmp_path, "configs/sweep.yaml") as project:
        project.env["COMPOSE_PROFILES"] = "edge"  # every `up` starts the edge node too
        db = project.results / "sweep.db"
        n_trials = expected_trials(tmp_path / "configs" / "sweep.yaml")
        project("up", "-d", "report")
        assert b"No report yet" in http_get_when_up(project.report_url)[1]

        t0 = time.monotonic()
        project("up", "-d", "--scale", f"ray-worker={WORKERS}")
        head = project.container("ray-head")
        workers = {c.attrs["Config"]["Hostname"]: c for c in project.containers("ray-worker")}
        assert len(workers) == WORKERS
        edge = project.container("edge")
        limits = edge.attrs["HostConfig"]
        assert (limits["NanoCpus"], limits["Memory"]) == (EDGE_CPUS * 10**9, EDGE_MEMORY), limits

        def trials():
            rows = project.query(head, TRIALS_SQL)
            if rows is None:
                assert project.state(head)[0] in ("running", "restarting", "created"), "the coordinator ended early"
            return rows

        def statuses(rows):
            return {s: sum(r["status"] == s for r in rows) for s in ("completed", "running", "pending", "failed")}

        def trials_when(condition, what: str) -> list[dict]:
            """The trials' rows, once they meet `condition`."""
            def check():
                rows = trials()
                return rows if rows and condition(rows) else None
            return wait_for(check, timeout=SWEEP_TIMEOUT_S, what=what)

        # 1. Trials run; no process of the sweep runs as root.
        trials_when(lambda rows: statuses(rows)["running"], "a trial to run")
        for container in (head, *workers.values(), project.container("report")):
            assert not root_processes(container), f"{container.name} runs as root: {root_processes(container)}"

        # 2. The head killed mid-sweep and `up` run again at once: both workers, still up,
        #    rejoin the new head and run its trials.
        rows = trials_when(lambda rows: statuses(rows)["completed"] >= 2 and statuses(rows)["running"],
                           "two completed trials and a running one")
        done_before_head_loss = completed(rows)
        started_at = {host: c.attrs["State"]["StartedAt"] for host, c in workers.items()}
        print(f"\nkilling the head after {time.monotonic() - t0:.0f} s; trials: {statuses(rows)}")
        head.kill()
        project("up", "-d", "--scale", f"ray-worker={WORKERS}")

        def ran_on_both_workers(rows):
            return {r["worker_host"] for key, r in by_key(rows).items()
                    if r["status"] == "completed" and key not in done_before_head_loss} >= set(workers)

        rows = trials_when(ran_on_both_workers, "both workers to run trials for the new head")
        print(f"both workers rejoined the new head by {time.monotonic() - t0:.0f} s; trials: {statuses(rows)}")
        for host, container in workers.items():
            container.reload()
            assert container.status == "running" and container.attrs["State"]["StartedAt"] == started_at[host], (
                f"worker {host} was restarted: it should have rejoined the new head by itself")

        # 3. A worker killed while it runs a trial: that trial is retried on the other one.
        def busy_worker():
            rows = trials()
            if not rows:
                return None
            assert n_trials - statuses(rows)["completed"] >= 3, "too few trials left to kill a worker mid-sweep"
            for host, container in sorted(workers.items()):
                if project.running_tasks(container):
                    return host, rows
            return None

        victim, rows_at_kill = wait_for(busy_worker, timeout=SWEEP_TIMEOUT_S, interval=1, what="a busy worker")
        print(f"killing worker {victim} after {time.monotonic() - t0:.0f} s; trials: {statuses(rows_at_kill)}")
        workers[victim].kill()
        running_at_kill = {r["key"]: r for r in rows_at_kill if r["status"] == "running"}
        rows = trials_when(lambda rows: all(by_key(rows)[k]["status"] == "completed" for k in running_at_kill),
                           "the trials that ran when the worker was killed")
        after = by_key(rows)
        retried = [k for k in running_at_kill if after[k]["attempts"] > running_at_kill[k]["attempts"]]
        from_victim = [k for k in running_at_kill if after[k]["worker_host"] == victim]  # its result was on its way
        assert retried or from_victim, "the killed worker's trial was neither retried nor recorded"
        assert all(after[k]["worker_host"] != victim for k in retried)

        # 4. `docker compose stop` mid-sweep: the coordinator leaves the sweep interrupted,
        #    within compose's grace period.
        rows = trials_when(lambda rows: statuses(rows)["running"], "a running trial")
        done_before_stop = completed(rows)
        assert statuses(rows)["pending"] >= 1, "the sweep ended before it could be stopped"
        started = time.monotonic()
        project("stop")
        print(f"`docker compose stop` took {time.monotonic() - started:.0f} s; trials before: {statuses(rows)}")
        status, code = project.state(head)
        assert status == "exited" and code != 137, f"the head did not stop on SIGTERM within the grace (exit {code})"
        (sweep,) = project.query_stored("SELECT status FROM sweeps")
        assert sweep["status"] == "interrupted"
        assert statuses(project.query_stored(TRIALS_SQL))["running"] == 0
        assert json.loads((project.results / "report" / "status.json").read_text())["status"] == "interrupted"

        # 5. The README's `up` resumes the sweep and finishes it: exit status 0.
        proc = project(*README_UP, "--scale", f"ray-worker={WORKERS}", timeout=SWEEP_TIMEOUT_S, check=False)
        summary = "\n".join(line for line in proc.stdout.splitlines() if "ray-head" in line)
        print(f"`up` exited {proc.returncode} after {time.monotonic() - t0:.0f} s in all:\n{summary[-2000:]}")
        assert proc.returncode == 0, proc.stdout[-6000:]

        # 6. Every trial recorded exactly once and completed; none completed twice.
        rows = project.query_stored("SELECT sweep_id, key, status, worker_host, allocator, accuracy, finished_at, "
                                    "error FROM trials")
        assert len({r["sweep_id"] for r in rows}) == 1
        assert len(rows) == len(by_key(rows)) == n_trials, f"{len(rows)} rows for {n_trials} trials"
        not_done = [(r["key"], r["status"], r["error"]) for r in rows if r["status"] != "completed"]
        assert not not_done, f"trials not completed: {not_done}"
        for earlier in (done_before_head_loss, done_before_stop):
            assert {k: v for k, v in completed(rows).items() if k in earlier} == earlier, "a completed trial ran again"
        ran_on = {r["worker_host"] for r in rows}
        assert ran_on <= set(workers) and len(ran_on) == WORKERS, f"trials ran on {ran_on}, workers are {set(workers)}"
        assert {r["allocator"] for r in rows} == {"tcmalloc"}  # the image's workers preload it

        # 7. The measurement stage ran on the edge node alone: a finished run asked for `edge`,
        #    every variant has a row, and every row names the edge node and its one CPU.
        runs = project.query_stored("SELECT status, \"on\", variants, seconds FROM measurement_runs")
        assert runs and runs[-1]["status"] == "finished" and runs[-1]["on"] == "edge", runs
        measured = project.query_stored(
            "SELECT v.format, m.node_host, m.cpus, m.cpu_model, m.latency_ms FROM measurements m "
            "JOIN variants v ON v.id = m.variant_id "
            "WHERE m.run_id = (SELECT max(id) FROM measurement_runs WHERE status = 'finished')")
        print(f"measurement stage: {runs[-1]['variants']} variants in {runs[-1]['seconds']:.1f} s on "
              f"{measured[0]['node_host']} ({measured[0]['cpu_model']}, {measured[0]['cpus']:g} CPUs)")
        assert len(measured) == n_trials == runs[-1]["variants"]
        hosts = {(m["node_host"], m["cpus"]) for m in measured}
        assert hosts == {(edge.attrs["Config"]["Hostname"], float(EDGE_CPUS))}, hosts
        assert all(m["latency_ms"] > 0 for m in measured)

        # 8. The report reaches the host and is served (docker-compose 1.29's `up
        #    --exit-code-from` stops every service, the report's too: start it again).
        project("up", "-d", "report")
        report_dir = project.results / "report"
        assert (report_dir / "index.html").is_file() and list(report_dir.glob("**/*.png")), f"no report in {report_dir}"
        code, html = http_get_when_up(project.report_url)
        assert code == 200 and b"No report yet" not in html
        linked = re.findall(r"""<img[^>]*\ssrc=["']([^"'?#]+\.png)[^"']*["']""", html.decode())
        assert linked, "index.html shows no PNG chart"
        code, png = http_get(project.report_url + linked[0])
        assert code == 200 and png.startswith(b"\x89PNG\r\n\x1a\n"), f"{linked[0]} is not a PNG"

        # 9. `down` removes the containers but leaves the results on the host.
        project.down()
        assert not project.containers()
    assert db.is_file() and (project.results / "report" / "index.html").is_file()
