"""A real PostgreSQL server for team-mode tests and benchmarks: Debian's `postgresql`
binaries (`.ci/debian-packages.sh postgresql` installs them), a cluster of its own in a
temporary folder, listening on one address (127.0.0.1 unless told), with a password.

PostgreSQL refuses to run as root; as root (CI) the cluster belongs to the `postgres`
user the Debian package creates, and its folder is made outside pytest's root-only
temporary tree.

    with PostgresServer.temporary() as pg:
        pg.create_database("prefect")
        url = pg.url("prefect", driver="postgresql+asyncpg")
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taxiops.app.server import free_port

USER = "taxiops"
INSTALL_HINT = "sudo apt-get install postgresql (or: .ci/debian-packages.sh postgresql)"


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL's binaries (/usr/lib/postgresql/N/bin), if installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _owner() -> dict[str, Any]:
    """`subprocess` arguments that run a PostgreSQL binary as a user it accepts."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in `data_dir`, on `host`:`port`, superuser `taxiops`."""

    data_dir: Path
    port: int
    bin_dir: Path
    host: str = "127.0.0.1"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @classmethod
    @contextmanager
    def temporary(cls, host: str = "127.0.0.1") -> Iterator[PostgresServer]:
        """A new cluster on `host`, started; stopped and removed on exit."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_HINT}")
        root = Path(tempfile.mkdtemp(prefix="taxiops-pg-"))
        os.chmod(root, 0o755)
        server = cls(data_dir=root / "data", port=free_port(), bin_dir=bin_dir, host=host)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    def start(self) -> None:
        """`initdb` (first time only), then `postgres`, and wait until it takes connections."""
        owner = _owner()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pwfile = self.data_dir.parent / "pwfile"
            pwfile.write_text(self.password + "\n")
            if owner:
                for path in (self.data_dir, pwfile):
                    shutil.chown(path, pwd.getpwnam("postgres").pw_uid, "postgres")
            subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    *("-D", str(self.data_dir), "-U", USER, "--pwfile", str(pwfile)),
                    *("--auth", "scram-sha-256", "-E", "UTF8", "--no-sync"),
                ],
                check=True,
                capture_output=True,
                **owner,
            )
            pwfile.unlink()
            # initdb lets in loopback only; a host on a LAN (tests/netns.py) is let in from it.
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet scram-sha-256\n")
        log = (self.data_dir.parent / "postgres.log").open("ab")
        if owner:
            shutil.chown(log.name, pwd.getpwnam("postgres").pw_uid, "postgres")
        self._process = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                *("-D", str(self.data_dir), "-p", str(self.port)),
                *("-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories="),
                *("-c", "fsync=off", "-c", "max_connections=200"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **owner,
        )
        log.close()
        self._wait_ready(timeout=60)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None:
                raise RuntimeError(f"postgres exited; see {self.data_dir.parent / 'postgres.log'}")
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"postgres on port {self.port} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), as `pg_ctl stop -m fast` does."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        """What the server logged so far."""
        log = self.data_dir.parent / "postgres.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def create_database(self, name: str) -> None:
        """`CREATE DATABASE name` owned by the superuser."""
        import asyncio

        import asyncpg  # type: ignore[import-untyped]

        async def create() -> None:
            connection = await asyncpg.connect(self.url("postgres", driver="postgresql"))
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())

    def url(self, database: str, *, driver: str = "postgresql") -> str:
        """A connection URL with the password in it (keep it out of argv and logs)."""
        return f"{driver}://{USER}:{self.password}@{self.host}:{self.port}/{database}"
