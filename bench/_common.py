"""Shared by the benchmarks: where the real data is, a throwaway Prefect server, and a
throwaway `taxiops up`."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from taxiops.intake import Ledger

SHARED_DATA = Path(
    os.environ.get("TAXIOPS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def real_month(name: str) -> Path:
    """A real TLC month from ../shared/data, or exit with a clear message."""
    path = SHARED_DATA / name
    if not path.is_file():
        sys.exit(f"skipped: {path} not found (set TAXIOPS_SHARED_DATA to the folder of TLC months)")
    return path


@contextmanager
def isolated_taxiops(months: list[str], source: Path | None = None) -> Iterator[Path]:
    """A temp TAXIOPS_HOME and incoming folder holding copies of `months` (from `source`, by
    default ../shared/data), and a real local Prefect server (unless PREFECT_API_URL is
    set); yields the incoming folder."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taxiops.app.server import LocalPrefectServer, free_port

    root = Path(tempfile.mkdtemp(prefix="taxiops-bench-"))
    incoming = root / "incoming"
    incoming.mkdir()
    for name in months:
        shutil.copy(real_month(name) if source is None else source / name, incoming / name)
    os.environ.update(TAXIOPS_HOME=str(root / "home"), TAXIOPS_INCOMING_DIR=str(incoming))
    server = None
    try:
        if "PREFECT_API_URL" not in os.environ:
            server = LocalPrefectServer(state_dir=root / "server", port=free_port())
            server.start()
            os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            yield incoming
    finally:
        if server is not None:
            from taxiops.app.service import flush_to_api

            flush_to_api()
            server.stop()
            os.environ.pop("PREFECT_API_URL", None)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RunningTaxiops:
    """A `taxiops up` child process on its own temp state, and where to look at it."""

    root: Path
    incoming: Path
    staging: Path  # same filesystem as `incoming`, not watched: write here, then rename
    ledger_path: Path
    api_url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    ready_seconds: float

    def ledger(self) -> Ledger:
        from taxiops.intake import Ledger

        return Ledger(self.ledger_path)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_summary(self, show: int = 20) -> str:
        """Counts of what went wrong in the `taxiops up` output and the server's log, and the
        first notable lines of the former."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        server_log = self.root / "home" / "server" / "server.log"
        server_lines = server_log.read_text(errors="replace").splitlines()
        notable = [
            line
            for line in lines
            if any(needle in line for needle in ("ERROR", "WARNING", "hand-off attempt"))
            or _names_503(line)
        ]

        def count(needle: str, among: list[str]) -> int:
            return sum(needle in line for line in among)

        return "\n".join(
            [
                f"`taxiops up` log: {count('ERROR', lines)} ERROR lines, "
                f"{count('Traceback', lines)} tracebacks, "
                f"{count('hand-off attempt', lines)} hand-off retries, "
                f"{sum(map(_names_503, lines))} lines naming HTTP 503",
                *(f"  | {line[:300]}" for line in notable[:show]),
                f"server log: {count('| ERROR', server_lines)} ERROR entries, "
                f"{count('database is locked', server_lines)} lines naming "
                "'database is locked'",
            ]
        )


def keep_prefect_local() -> None:
    """No Prefect SDK telemetry from this process; call before the first Prefect import."""
    os.environ.setdefault("DO_NOT_TRACK", "1")


@contextmanager
def taxiops_up(
    *, ready_timeout: float = 120.0, env: dict[str, str] | None = None
) -> Iterator[RunningTaxiops]:
    """`python -m taxiops up` with a temp TAXIOPS_HOME, incoming folder and PREFECT_HOME, its own
    local Prefect server on a free port (PREFECT_API_URL unset for it), until it prints
    "taxiops is up". This process then talks to that server; everything stops on exit.
    `env` adds variables (a loopback webhook: no alert leaves the machine otherwise)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taxiops.app.server import free_port, is_healthy

    root = Path(tempfile.mkdtemp(prefix="taxiops-bench-up-"))
    incoming, staging = root / "incoming", root / "staging"
    incoming.mkdir()
    staging.mkdir()
    port = free_port()
    extra_env, env = env, {k: v for k, v in os.environ.items() if k not in _UNSHARED_ENV}
    env.update(
        TAXIOPS_HOME=str(root / "home"),
        TAXIOPS_INCOMING_DIR=str(incoming),
        TAXIOPS_SERVER_PORT=str(port),
        PREFECT_HOME=str(root / "prefect-home"),
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    log_path = root / "up.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        # cwd=root: no project `.env` (webhooks, ports) leaks into the run.
        process = subprocess.Popen(
            [sys.executable, "-m", "taxiops", "up"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        while "taxiops is up" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() - started > ready_timeout:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`taxiops up` did not come up:\n{tail}")
            time.sleep(0.1)
        running = RunningTaxiops(
            root=root,
            incoming=incoming,
            staging=staging,
            ledger_path=root / "home" / "ledger.sqlite3",
            api_url=api_url,
            log_path=log_path,
            process=process,
            ready_seconds=time.monotonic() - started,
        )
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                yield running
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        leftovers = _stop_process_tree(process)
        if leftovers:
            print(f"  (killed {len(leftovers)} leftover processes: {leftovers})", file=sys.stderr)
        if is_healthy(api_url):
            print(f"  WARNING: something still answers {api_url}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


# Never handed to the child: it must start its own server and send nothing off this machine.
_UNSHARED_ENV = frozenset(
    {
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
        "SLACK_WEBHOOK_URL",
        "SLACK_BOT_TOKEN",
        "SLACK_CHANNEL",
        "TAXIOPS_SLACK_WEBHOOK_URL",
        "TAXIOPS_SLACK_BOT_TOKEN",
        "TAXIOPS_SLACK_CHANNEL",
        "TAXIOPS_APPRISE_URLS",
    }
)


def _stop_process_tree(process: subprocess.Popen[bytes], timeout: float = 60.0) -> list[int]:
    """Ctrl-C `process` (taxiops stops its runner, watcher and server), then SIGKILL whatever
    of its process tree is still alive; returns the pids that had to be killed."""
    tree = _descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    killed = []
    for pid, started in tree.items():
        if _start_time(pid) != started:  # gone (or the pid was reused): not ours any more
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
    return killed


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]  # field 22, starttime in clock ticks


def _descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` with its start time, read from /proc (the Prefect server
    runs in its own session, so a process-group kill would miss it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                found[child] = started
            todo.append(child)
    return found


def epoch(moment: datetime | None) -> float | None:
    """Seconds since the epoch of an aware datetime (Prefect's timestamps), like time.time()."""
    return None if moment is None else moment.timestamp()


def spread(values: list[float], unit: str = "s") -> str:
    """min / median / max of `values`."""
    if not values:
        return "no values"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"min {low:.2f} / median {mid:.2f} / max {high:.2f} {unit}"


def task_seconds(api_url: str, flow_run_id: str | UUID | None) -> dict[str, float]:
    """The run time the server recorded for each task of the run (load-month summed)."""
    if flow_run_id is None:
        return {}
    from tests.e2e.harness import task_runs_of

    found: dict[str, float] = {}
    for task in task_runs_of(api_url, flow_run_id):
        name = task.name.rsplit("-", 1)[0]
        found[name] = found.get(name, 0.0) + task.total_run_time.total_seconds()
    return found


def _names_503(line: str) -> bool:
    """Whether a log line reports an HTTP 503 (not a timestamp ending in .503)."""
    return "HTTP 503" in line or "503 Service Unavailable" in line


def count_handoff_503s(log: str) -> int:
    """Lines of a watcher's log saying a hand-off attempt was answered HTTP 503."""
    return sum("hand-off attempt" in line and _names_503(line) for line in log.splitlines())
