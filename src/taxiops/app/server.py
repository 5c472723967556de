"""Local servers as child processes: Prefect on SQLite under `TAXIOPS_HOME`, and the MLflow UI.

Used by `taxiops up` and by the test session; both need a real server that
starts, reports healthy and stops without leaving a process behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taxiops.lifecycle import Lifecycle

# A first start migrates a new SQLite database: over a minute on a busy 2-core machine.
_HEALTH_TIMEOUT_SECONDS = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_error(host: str, port: int) -> OSError | None:
    """Why nothing could listen on `host:port` now, or None if it could (a socket in
    TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
        return None


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket listens on `host:port` (one in TIME_WAIT does not count)."""
    return bind_error(host, port) is not None


def server_environment(
    state_dir: Path,
    host: str,
    port: int,
    *,
    database_url: str | None = None,
    auth_string: str | None = None,
) -> dict[str, str]:
    """Environment for a Prefect server whose every file lives in `state_dir`, on SQLite
    there unless `database_url` names another database; `auth_string` (USER:PASSWORD)
    turns on the API's basic auth. Secrets travel here, never on a command line."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    env.update(
        PREFECT_HOME=str(state_dir),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url
        or f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # A server bound to every address is opened by other names: its UI asks its own origin.
        PREFECT_UI_API_URL="/api" if host in ("0.0.0.0", "::") else f"http://{host}:{port}/api",
    )
    if auth_string is not None:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    return env


@dataclass
class LocalServer(Lifecycle):
    """A server in a child process of its own session, with its state in `state_dir`; a
    context manager. Subclasses say what to run and where it answers when healthy."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 4200
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    #: How errors name the server, e.g. "Prefect server".
    label = "server"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server process, while it runs."""
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code of the last server process, once it has ended."""
        return None if self._process is None else self._process.poll()

    def start(self, timeout: float = _HEALTH_TIMEOUT_SECONDS) -> None:
        """Start the server and wait until it answers healthy; again after it ended, on
        the same port and state. Raises RuntimeError (its one-line reason) if the process
        exits first, TimeoutError if it never answers."""
        if self.pid is not None:
            raise RuntimeError(f"the {self.label} on port {self.port} is already running")
        self.stop()  # what a dead server left of its process group
        if port_in_use(self.host, self.port):  # found in ms; the server takes seconds to say so
            raise RuntimeError(f"port {self.port} on {self.host} is in use by another process")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.state_dir / "server.log"
        with log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy(timeout, log_path, log_offset)

    def _wait_healthy(self, timeout: float, log_path: Path, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self._process.returncode}: "
                    f"{_last_line(log_path, log_offset)} (log: {log_path})"
                )
            if answers(self.health_url):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.label} at {self.health_url} not healthy after {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:  # killed: its own children may live on
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class LocalPrefectServer(LocalServer):
    """`prefect server start` on SQLite in `state_dir`, or on `database_url`; with
    `auth_string`, every API request but the health check needs it (HTTP basic auth).
    Started through `taxiops.app.prefect_server`, so SQLite writers wait their turn."""

    database_url: str | None = field(default=None, repr=False)
    auth_string: str | None = field(default=None, repr=False)

    label = "Prefect server"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def health_url(self) -> str:
        return f"{self.api_url}/health"

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "taxiops.app.prefect_server"),
            *("server", "start", "--no-background"),
        ]

    def environment(self) -> dict[str, str]:
        return server_environment(
            self.state_dir,
            self.host,
            self.port,
            database_url=self.database_url,
            auth_string=self.auth_string,
        )


@dataclass
class LocalMlflowServer(LocalServer):
    """`mlflow server`: the MLflow UI (and REST API) over a tracking store. The store's URI
    and the credentials travel in the environment, never on the command line.

    `artifacts_dir` is where clients write model files themselves (one machine). With
    `artifacts_destination` instead the server keeps them and serves them over HTTP
    (`mlflow-artifacts:`), so workers elsewhere need no shared folder. `credentials`
    (user, password) turn on MLflow's basic-auth app with that user as its admin and no
    access for anyone else."""

    tracking_uri: str = field(default="", repr=False)
    artifacts_dir: Path | None = None
    artifacts_destination: str | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    port: int = 5000

    label = "MLflow UI"

    @property
    def health_url(self) -> str:
        return f"{self.ui_url}/health"

    def command(self) -> list[str]:
        auth = ("--app-name", "basic-auth") if self.credentials is not None else ()
        return [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", self.host, "--port", str(self.port), "--workers", "1", *auth),
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MLFLOW_BACKEND_STORE_URI"] = self.tracking_uri
        # MLflow 3's job runner (GenAI judges, trace rollups) forks six huey consumers of
        # ~250 MiB each, ~2.4 GiB in all, that taxiops never gives work to.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        if self.artifacts_destination is not None:
            env["MLFLOW_ARTIFACTS_DESTINATION"] = self.artifacts_destination
        elif self.artifacts_dir is not None:
            env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = str(self.artifacts_dir.resolve())
        if self.credentials is not None:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self._auth_config())
            env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.credentials
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = self._csrf_key()
        return env

    def _csrf_key(self) -> str:
        """The auth app's CSRF key: made once, kept (owner-only) so restarts keep it."""
        path = self.state_dir / "flask-secret-key"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as key:
                key.write(secrets.token_hex(32))
        return path.read_text().strip()

    def _auth_config(self) -> Path:
        """The basic-auth app's settings (no secret in them): users in SQLite here, and no
        permission for a user the admin did not grant one."""
        path = self.state_dir / "basic_auth.ini"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{(self.state_dir / 'basic_auth.db').resolve()}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # A checked password is trusted for a minute, not hashed again (PBKDF2) for
            # each of the dozens of requests a training run makes.
            "auth_cache_ttl_seconds = 60\n"
        )
        return path


def is_healthy(api_url: str) -> bool:
    """Whether a Prefect API answers its health check."""
    return answers(f"{api_url}/health")


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _last_line(log_path: Path, offset: int) -> str:
    """The last paragraph the server wrote since `offset` (its error, usually), on one line:
    Prefect's console wraps its messages at 80 columns."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return paragraphs[-1][:300] if paragraphs else "no output"


def ui_url_for(api_url: str) -> str:
    """The Prefect UI of an API URL (`http://host:port/api` -> `http://host:port`)."""
    return api_url.rstrip("/").removesuffix("/api")
