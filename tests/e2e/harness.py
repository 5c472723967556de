"""taxiops as a user runs it, for end-to-end tests and benchmarks.

A `Site` is one installation: its TAXIOPS_HOME, incoming folder, the Prefect API and
Slack webhook it talks to, and fast timings. `site.start("watch")` runs
`python -m taxiops watch` as a child process (`TaxiopsProcess`): wait for a log line,
SIGKILL it, Ctrl-C it, start it again with the same environment. `runs_by_file` and
`wait_until_each_ran_once` read back from the Prefect server what ran for each file.

    site = Site(tmp_path, api_url=server.api_url, slack_webhook_url=inbox.url)
    with site.start("up", "--no-watch") as up, site.start("watch") as watcher:
        up.wait_for_log(UP_READY)
        files = [site.drop("green", "2023-01"), site.drop("yellow", "2023-01")]
        wait_until_each_ran_once(site.api_url, files, timeout=120)

Bytes must be new to the server: the idempotency key is the content SHA-256, so a file
dropped with the same bytes in an earlier test finds that test's run. `Site.drop`
seeds each site differently unless given a seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from taxiops.ml import write_synth_month
from taxiops.tripfile import Month, TaxiType, sha256_of
from tests.stores import seed_home, seed_mlflow_store

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun, TaskRun

    from taxiops.intake import FileState, Ledger, LedgerEntry
    from taxiops.notify import SlackInbox

T = TypeVar("T")

UP_READY = "taxiops is up"  # `taxiops up` prints this once it serves
WATCH_READY = "watching "  # `taxiops watch` logs this once its observer runs
HANDED_OFF = "handed to Prefect as flow run"  # the watcher's log line per hand-off

# Timings for tests: retry hand-offs within a second, read outcomes twice a second.
FAST_ENV: dict[str, str] = {
    "TAXIOPS_WATCH_BACKOFF_MAX_SECONDS": "1",
    "TAXIOPS_WATCH_POLL_RUNS_SECONDS": "0.5",
    "TAXIOPS_TASK_RETRY_DELAY_SECONDS": "0",
    # Each poll costs the session server CPU; 0.5 s keeps hand-off latency well under a run.
    "TAXIOPS_RUNNER_POLL_SECONDS": "0.5",
    # The MLflow UI takes ~8 s to start; tests/e2e/test_up.py serves it.
    "TAXIOPS_MLFLOW_UI": "false",
    "PYTHONUNBUFFERED": "1",
    "DO_NOT_TRACK": "1",
}

# Never inherited from the test process: every site says where it talks to.
_PRIVATE_ENV_PREFIXES = ("TAXIOPS_", "SLACK_", "PREFECT_API_", "MLFLOW_")


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.1
) -> T:
    """Poll `predicate` until it returns something truthy; return it, or raise TimeoutError
    naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Site:
    """One taxiops installation under `root`: `home/`, `data/incoming/`, `data/staging/`.

    `env` are extra variables for every process of the site (they win over FAST_ENV).
    `embedded_server=True` leaves PREFECT_API_URL unset, so `taxiops up` starts its own
    server on the port of `api_url` (TAXIOPS_SERVER_PORT)."""

    root: Path
    api_url: str
    slack_webhook_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    embedded_server: bool = False
    prefix: list[str] = field(default_factory=list)  # before its commands: `ip netns exec HOST`
    seed: int = field(default_factory=lambda: random.randrange(1_000_000) * 1_000)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._drops = 0
        if self.embedded_server:
            seed_home(self.home)
        else:
            seed_mlflow_store(self.home)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def incoming(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def staging(self) -> Path:
        """Beside `incoming` on the same filesystem, unwatched: write here, rename in."""
        return self.root / "data" / "staging"

    def environment(self, **more: str) -> dict[str, str]:
        """The environment of this site's processes."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        env.update(FAST_ENV)
        env.update(TAXIOPS_HOME=str(self.home), TAXIOPS_INCOMING_DIR=str(self.incoming))
        if self.embedded_server:
            env["TAXIOPS_SERVER_PORT"] = str(urlsplit(self.api_url).port)
        else:
            env["PREFECT_API_URL"] = self.api_url
        if self.slack_webhook_url is not None:
            env["SLACK_WEBHOOK_URL"] = self.slack_webhook_url
        env.update(self.env)
        env.update(more)
        return env

    def drop(
        self, taxi_type: TaxiType, month: str, *, rows: int = 2_000, seed: int | None = None
    ) -> Path:
        """Write a synthetic month in `staging`, then rename it into `incoming` (it lands
        complete, as a copy tool's rename would); returns its path in `incoming`."""
        if seed is None:
            self._drops += 1
            seed = self.seed + self._drops
        staged = write_synth_month(
            self.staging, taxi_type, Month.parse(month), rows=rows, seed=seed
        )
        return staged.rename(self.incoming / staged.name)

    def ledger(self) -> Ledger:
        from taxiops.intake import Ledger

        return Ledger(self.home / "ledger.sqlite3")

    def entry(self, path: Path) -> LedgerEntry | None:
        """The ledger entry of the file at `path` (the newest, if the name came twice)."""
        found = [e for e in self.ledger().entries() if e.path == path]
        return found[-1] if found else None

    def wait_for_state(self, path: Path, state: FileState, timeout: float = 30.0) -> LedgerEntry:
        """Wait until the ledger records `state` for the file at `path`."""

        def reached() -> LedgerEntry | None:
            entry = self.entry(path)
            return entry if entry is not None and entry.state is state else None

        return wait_until(reached, timeout, f"{path.name} to be {state} in the ledger")

    def start(self, *args: str, name: str | None = None, **env: str) -> TaxiopsProcess:
        """Start `python -m taxiops <args>`; its output goes to `root/<name>.log`."""
        label = name or "-".join(a.lstrip("-") for a in args)
        return TaxiopsProcess(
            list(args),
            self.environment(**env),
            cwd=self.root,
            log_path=self.root / f"{label}.log",
            prefix=self.prefix,
        ).start()

    def run(
        self, *args: str, timeout: float = 60.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m taxiops <args>` to completion (`retry`, `status`)."""
        return subprocess.run(
            [sys.executable, "-m", "taxiops", *args],
            cwd=self.root,
            env=self.environment(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class ServedSite:
    """`taxiops up` running on a site, alerting a local Slack-compatible inbox."""

    site: Site
    up: TaxiopsProcess
    inbox: SlackInbox


@contextmanager
def served_site(
    api_url: str, root: Path, *up_args: str, env: dict[str, str] | None = None
) -> Iterator[ServedSite]:
    """`taxiops up <up_args>` on a new site under `root` against `api_url`, alerting a new
    local inbox, once it is up. Scheduled runs other tests left on the server are deleted
    first, so this runner does not execute them."""
    from taxiops.notify import SlackInbox

    discard_scheduled_runs(api_url)
    with SlackInbox(echo=False) as inbox:
        site = Site(root, api_url=api_url, slack_webhook_url=inbox.url, env=env or {})
        with site.start("up", *up_args) as up:
            up.wait_for_log(UP_READY)
            yield ServedSite(site, up, inbox)


class TaxiopsProcess:
    """One `python -m taxiops ...` child (or of another `module`: `prefect` for a worker)
    in its own session; a context manager that leaves nothing of it running. `prefix`
    goes before the command (`ip netns exec HOST`, which execs it in the same process)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        cwd: Path,
        log_path: Path,
        module: str = "taxiops",
        prefix: list[str] | None = None,
    ) -> None:
        self.module = module
        self.prefix = prefix or []
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current incarnation's output starts
        self.starts = 0

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"taxiops {' '.join(self.args)} was never started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> TaxiopsProcess:
        """Start (again, with the same environment); output is appended to the log."""
        if self.alive:
            raise RuntimeError(f"taxiops {' '.join(self.args)} is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", self.module, *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    def log(self, *, all_runs: bool = False) -> str:
        """Output of the current start (or of every start)."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[0 if all_runs else self._log_offset :].decode(errors="replace")

    def log_lines(self, needle: str, *, all_runs: bool = True) -> list[str]:
        return [line for line in self.log(all_runs=all_runs).splitlines() if needle in line]

    def wait_for_log(self, needle: str, timeout: float = 120.0, *, count: int = 1) -> str:
        """Wait until the current start logged `needle` `count` times; fail early if the
        process exits."""

        def seen() -> str | None:
            text = self.log()
            if text.count(needle) >= count:
                return text
            if not self.alive:
                raise RuntimeError(
                    f"taxiops {' '.join(self.args)} exited with {self.process.returncode} "
                    f"before logging {needle!r}:\n{text[-3000:]}"
                )
            return None

        return wait_until(seen, timeout, f"{needle!r} x{count} from taxiops {' '.join(self.args)}")

    def kill(self) -> None:
        """SIGKILL the process and everything in its session, at once, and reap it."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: wait for a clean exit and return its code (SIGKILL after `timeout`)."""
        if not self.alive:
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        """Ctrl-C, then SIGKILL whatever of the session is left (flow-run processes too)."""
        if self._process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.interrupt(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def children(self) -> list[int]:
        """Pids of every live descendant, from /proc."""
        return list(descendants(self.pid))

    def __enter__(self) -> TaxiopsProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parent_of(pid: int) -> int | None:
    """The parent pid of a live process, from /proc (None once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> Iterator[int]:
    """Every live process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent_of(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            yield child
            todo.append(child)


def processes_below(pid: int, *words: str) -> list[int]:
    """Pids of the processes below `pid` whose argv holds every one of `words`."""
    wanted = [word.encode() for word in words]
    found = []
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(word in argv for word in wanted):
            found.append(child)
    return found


def _fork_server_family(up_pid: int) -> list[tuple[int, bool]]:
    """Each process below `up_pid` running `multiprocessing.forkserver.main` (the fork server
    of `taxiops.pipeline.warm_start` and its forks, which keep its argv and environment),
    with whether its parent runs it too: True for a fork."""

    def runs_fork_server(pid: int | None) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(arg.startswith(b"from multiprocessing.forkserver import main") for arg in argv)

    return [
        (pid, runs_fork_server(_parent_of(pid)))
        for pid in descendants(up_pid)
        if runs_fork_server(pid)
    ]


def fork_server_processes(up_pid: int) -> list[int]:
    """Pids of the fork servers below `taxiops up` (pid `up_pid`), without their forks."""
    return [pid for pid, forked in _fork_server_family(up_pid) if not forked]


def forked_run_processes(up_pid: int) -> list[int]:
    """Pids of the flow runs that `taxiops up` (pid `up_pid`) forked from its fork server:
    the fork server's children. A fork keeps its server's argv and environment, so neither
    tells which run it is."""
    return [pid for pid, forked in _fork_server_family(up_pid) if forked]


def server_processes(pid: int) -> list[int]:
    """Pids of the `prefect server start` processes below `pid` (the embedded server)."""
    return processes_below(pid, "taxiops.app.prefect_server", "server", "start")


def drop_junk(site: Site, year: int) -> Path:
    """A file whose name says month 13, landed complete: the watcher rejects it
    (file-name) at once."""
    staged = site.staging / f"green_tripdata_{year}-13.parquet"
    staged.write_bytes(b"junk")
    return staged.rename(site.incoming / staged.name)


def the_embedded_server(up_pid: int) -> int:
    """The pid of the one embedded Prefect server below `taxiops up` (waits for it)."""
    found = wait_until(lambda: server_processes(up_pid), 30, "the embedded server process")
    assert len(found) == 1, f"one embedded server expected: {found}"
    return found[0]


def embedded_site(root: Path, slack_webhook_url: str, env: dict[str, str] | None = None) -> Site:
    """A site whose `taxiops up` starts its own Prefect server, on a free port."""
    from taxiops.app.server import free_port

    api_url = f"http://127.0.0.1:{free_port()}/api"
    return Site(
        root,
        api_url=api_url,
        slack_webhook_url=slack_webhook_url,
        env=env or {},
        embedded_server=True,
    )


def flow_run_processes(flow_run_id: UUID | str) -> list[int]:
    """Pids of the processes running a flow run that a worker started, as `python -m
    prefect.engine` with PREFECT__FLOW_RUN_ID in its environment (see
    `forked_run_processes` for the runs of `taxiops up`)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ:
            found.append(int(entry.name))
    return found


# --- what the server recorded --------------------------------------------------------------
def prefect_client(api_url: str) -> SyncPrefectClient:
    """A sync client of the API at `api_url` (use as a context manager), sending this
    process's `PREFECT_API_AUTH_STRING` setting, as `get_client()` does."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_AUTH_STRING

    return SyncPrefectClient(api_url, auth_string=PREFECT_API_AUTH_STRING.value())


def run_name_prefix(path: Path) -> str:
    """The watcher names a file's runs `<stem>-<sha256[:8]>[-run<n>]`."""
    return f"{path.stem}-{sha256_of(path)[:8]}"


def runs_by_file(api_url: str, files: Iterable[Path]) -> dict[Path, list[FlowRun]]:
    """Every flow run whose `new_file` parameter is one of `files`, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[Path, list[FlowRun]] = {}
    with prefect_client(api_url) as client:
        for path in files:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run_name_prefix(path))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            found[path] = [r for r in runs if r.parameters.get("new_file") == str(path)]
    return found


def is_final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def describe_runs(runs: dict[Path, list[FlowRun]]) -> str:
    return "\n".join(
        f"  {path.name}: "
        + (", ".join(f"{r.name} {r.state.name if r.state else '?'}" for r in found) or "no run")
        for path, found in runs.items()
    )


def wait_until_finished(
    api_url: str, files: list[Path], timeout: float, *, runs_per_file: int = 1
) -> dict[Path, list[FlowRun]]:
    """Wait until each file has at least `runs_per_file` runs and every run is final."""
    last: dict[Path, list[FlowRun]] = {}

    def finished() -> bool:
        nonlocal last
        last = runs_by_file(api_url, files)
        return all(
            len(runs) >= runs_per_file and all(is_final(r) for r in runs) for runs in last.values()
        )

    try:
        wait_until(finished, timeout, f"runs of {len(files)} files to finish", every=0.5)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{describe_runs(last)}") from None
    return last


def wait_until_each_ran_once(
    api_url: str, files: list[Path], timeout: float, *, settle: float = 1.0
) -> dict[Path, FlowRun]:
    """Wait for every file's run to finish, look again after `settle` seconds (a late
    duplicate would show by then), and assert exactly one run per file, all Completed."""
    wait_until_finished(api_url, files, timeout)
    time.sleep(settle)
    runs = runs_by_file(api_url, files)
    assert all(len(found) == 1 for found in runs.values()), (
        "each file must run exactly once:\n" + describe_runs(runs)
    )
    assert all(found[0].state and found[0].state.is_completed() for found in runs.values()), (
        "every run must complete:\n" + describe_runs(runs)
    )
    return {path: found[0] for path, found in runs.items()}


def task_runs_of(api_url: str, flow_run_id: UUID | str) -> list[TaskRun]:
    """The task runs of a flow run, as the server recorded them."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client(api_url) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
        )


def discard_scheduled_runs(api_url: str) -> int:
    """Delete the taxiops runs still waiting on the server (left by tests that hand files
    off with no runner serving): a runner started now would otherwise run them first.
    Returns how many were deleted."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    waiting = FlowRunFilter(
        tags=FlowRunFilterTags(all_=["taxiops"]),
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
        ),
    )
    deleted = 0
    with prefect_client(api_url) as client:
        while runs := client.read_flow_runs(flow_run_filter=waiting, limit=100):
            for run in runs:
                client.delete_flow_run(run.id)
            deleted += len(runs)
    return deleted
