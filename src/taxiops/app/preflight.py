"""Checks a command runs before it starts, so a mistake costs one clear line, not a traceback.

Each check raises `StartupError` naming the setting, what is wrong and what to do.
"""

from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from taxiops.app.server import answers, bind_error, is_healthy
from taxiops.errors import StartupError
from taxiops.settings import Settings, store_scheme

# Default ports of the database servers an MLflow store can live in.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_folder(variable: str, folder: Path) -> None:
    """`folder` is (or can be made) a folder this process can write in."""
    if folder.exists() and not folder.is_dir():
        raise StartupError(
            f"{variable}={folder}", "is a file, not a folder", f"point {variable} at a folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"{variable}={folder}",
            f"cannot write there ({reason})",
            f"point {variable} at a writable folder or fix its permissions",
        ) from None


def check_folders(settings: Settings, *, incoming: bool = True) -> None:
    """TAXIOPS_HOME and, when the command watches or writes months, TAXIOPS_INCOMING_DIR."""
    check_folder("TAXIOPS_HOME", settings.home)
    if incoming:
        check_folder("TAXIOPS_INCOMING_DIR", settings.incoming_dir)


def check_exposure(settings: Settings) -> None:
    """Servers taxiops starts beyond loopback need credentials: `StartupError` if none."""
    if settings.server_on_loopback or settings.credentials is not None:
        return
    raise StartupError(
        f"TAXIOPS_SERVER_HOST={settings.server_host}",
        "beyond loopback, and without credentials its servers would take orders from "
        "anyone who reaches them",
        "set PREFECT_API_AUTH_STRING=USER:PASSWORD (in .env) here and for every worker and "
        "watcher, or bind to 127.0.0.1",
    )


def check_port_free(settings: Settings) -> None:
    """The local server's port is free, or a Prefect server already answers there (which
    `taxiops up` reports itself)."""
    error = bind_error(settings.server_host, settings.server_port)
    if error is None:
        return
    if error.errno != errno.EADDRINUSE:
        raise StartupError(
            f"TAXIOPS_SERVER_HOST={settings.server_host}",
            f"cannot listen there ({error.strerror})",
            "use an address of this machine, such as 127.0.0.1",
        )
    if is_healthy(settings.api_url):
        return
    raise StartupError(
        f"TAXIOPS_SERVER_PORT={settings.server_port}",
        f"port {settings.server_port} on {settings.server_host} is in use by another program",
        "set TAXIOPS_SERVER_PORT to a free port",
    )


def check_api_answers(api_url: str | None) -> None:
    """A configured `PREFECT_API_URL` answers `/health` (no URL: nothing to check)."""
    if not api_url or is_healthy(api_url):
        return
    raise StartupError(
        f"PREFECT_API_URL={_without_credentials(api_url)}",
        "does not answer /health",
        "start that server, or unset PREFECT_API_URL to use a local one",
    )


def check_tracking_store(settings: Settings) -> None:
    """A configured `MLFLOW_TRACKING_URI` answers: a tracking server its `/health`, a
    database server a TCP connection (the local default is the folder check's)."""
    if settings.mlflow_tracking_uri is None:
        return
    uri = settings.tracking_uri
    parts = urlsplit(uri)
    scheme = store_scheme(uri)
    if scheme in ("http", "https"):
        if answers(f"{uri.rstrip('/')}/health"):
            return
        problem = "does not answer /health"
    elif scheme in _DATABASE_PORTS and parts.hostname:
        try:
            with socket.create_connection(
                (parts.hostname, parts.port or _DATABASE_PORTS[scheme]), timeout=5
            ):
                return
        except OSError as exc:
            problem = f"its database server does not answer ({exc.strerror or exc})"
    else:
        return
    raise _tracking_store_error(uri, problem)


def unreadable_store(settings: Settings, error: Exception) -> StartupError:
    """The one line for an MLflow store that could not be read, without its credentials."""
    from taxiops.notify._redact import redact

    uri = settings.tracking_uri
    reason = redact((str(error).strip().splitlines() or [type(error).__name__])[0], [uri])
    return _tracking_store_error(uri, f"the models cannot be read ({reason[:300]})")


def _tracking_store_error(uri: str, problem: str) -> StartupError:
    return StartupError(
        f"MLFLOW_TRACKING_URI={_without_credentials(uri)}",
        problem,
        "start that tracking server, or unset MLFLOW_TRACKING_URI to use the local store",
    )


def configured_api_url() -> str | None:
    """`PREFECT_API_URL` from the environment or the active Prefect profile."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))
