"""Real months in: download TLC month files into the incoming folder, verified, never partial.

    in the ledger, or in the folder with TLC's size ──────────────> skipped (--force: fetch)
    lock `.<name>.part` ─> GET, `Range: bytes=<part size>-` ─> `.<name>.part`
        5xx, timeout, cut connection ─> back off, resume from the part's size
        403 / 404 ─> not published (TLC publishes about two months late)
    PAR1 header and footer, rows > 0 ─> rename to `<name>` (the watcher sees it whole)
        HTML page, torn or empty parquet ─> refused, the part file deleted

The part file is hidden and ends in `.part`: the watcher ignores both. Bytes are only
ever appended at the offset the server confirmed, so it is always a prefix of the remote
file: a cut, a Ctrl-C or a kill leaves it resumable. It is also the month's lock (flock):
two fetches of one month take turns and the second finds the first one's file.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from taxiops.errors import TaxiopsError
from taxiops.intake._backoff import Backoff
from taxiops.intake._incoming import PARQUET_MAGIC
from taxiops.tripfile import Month, TaxiType, file_name_for

if TYPE_CHECKING:
    from taxiops.settings import Settings

PART_SUFFIX = ".part"
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_CONTENT_RANGE = re.compile(r"^bytes (?:(?P<start>\d+)-\d+|\*)/(?P<total>\d+|\*)$")
_LOCK_POLL_SECONDS = 0.1


class FetchOutcome(StrEnum):
    """How the fetch of one month ended."""

    FETCHED = "fetched"
    PRESENT = "present"  # skipped: in the folder with TLC's size
    IN_LEDGER = "in-ledger"  # skipped: the watcher has seen this month
    DIFFERENT = "different"  # skipped: in the folder, but not with TLC's size
    NOT_PUBLISHED = "not-published"  # 403 / 404
    REFUSED = "refused"  # the bytes are not a parquet month with rows
    FAILED = "failed"  # HTTP or network errors, after the retries
    INTERRUPTED = "interrupted"  # Ctrl-C: the part file is kept for a resume

    @property
    def ok(self) -> bool:
        """Whether the month is in the folder (or known to the watcher) as TLC has it."""
        return self in (FetchOutcome.FETCHED, FetchOutcome.PRESENT, FetchOutcome.IN_LEDGER)


@dataclass(frozen=True)
class MonthFile:
    """One TLC month file to fetch."""

    taxi_type: TaxiType
    month: Month

    @property
    def name(self) -> str:
        return file_name_for(self.taxi_type, self.month)

    def __str__(self) -> str:
        return f"{self.taxi_type} {self.month}"


@dataclass(frozen=True)
class FetchResult:
    """What happened to one month; `message` is the one line to show a user."""

    request: MonthFile
    outcome: FetchOutcome
    path: Path
    message: str
    size: int | None = None
    rows: int | None = None
    resumed_from: int = 0  # bytes already in the part file when the last resume began
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome.ok


class FetchProgress(Protocol):
    """Receives progress from the download threads (several at once: be thread safe)."""

    def started(self, name: str, total: int | None, done: int) -> None:
        """A response began: `done` bytes are in the part file, of `total` (None: unknown)."""

    def advanced(self, name: str, received: int) -> None:
        """`received` more bytes were written."""

    def retrying(self, name: str, attempt: int, delay: float, reason: str) -> None:
        """Attempt `attempt` failed for `reason`; the next starts in `delay` seconds."""

    def finished(self, result: FetchResult) -> None:
        """The month is done, one way or another."""


class FetchInterruptedError(TaxiopsError):
    """Ctrl-C during a fetch: finished months stay, unfinished ones keep their part files."""

    def __init__(self, results: list[FetchResult], parts: list[Path]) -> None:
        self.results = results
        self.parts = parts
        kept = ", ".join(p.name for p in parts) or "nothing"
        super().__init__(
            f"fetch interrupted: kept {kept} to resume; run the same command again to resume"
        )


@dataclass(frozen=True)
class FetchOptions:
    """Where from, where to, and how hard to try."""

    base_url: str
    folder: Path
    concurrency: int = 2
    retries: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 2.0, 30.0))
    timeout_seconds: float = 30.0
    force: bool = False
    ledger_path: Path | None = None
    publication_lag_months: int = 2

    @classmethod
    def from_settings(
        cls, settings: Settings, *, folder: Path | None = None, force: bool = False
    ) -> FetchOptions:
        """Options from the `fetch_*` settings; `folder` defaults to the incoming folder."""
        first = settings.fetch_retry_delay_seconds
        return cls(
            base_url=settings.tlc_base_url,
            folder=settings.incoming_dir if folder is None else folder,
            concurrency=settings.fetch_concurrency,
            retries=settings.fetch_retries,
            backoff=Backoff(first, 2.0, max(first, 30.0)),
            timeout_seconds=settings.fetch_timeout_seconds,
            force=force,
            ledger_path=settings.ledger_path,
            publication_lag_months=settings.publication_lag_months,
        )

    def url_for(self, request: MonthFile) -> str:
        """TLC's layout: `<base>/<type>_tripdata_YYYY-MM.parquet`."""
        return f"{self.base_url.rstrip('/')}/{request.name}"


def parse_months(texts: Sequence[str]) -> list[Month]:
    """Months from `YYYY-MM`, `YYYY-MM..YYYY-MM` (inclusive) and comma lists of them;
    sorted, each once. `ValueError` names the piece that is not one."""
    months: set[Month] = set()
    for text in texts:
        for piece in (p.strip() for p in text.split(",")):
            if not piece:
                continue
            first, dots, last = piece.partition("..")
            start = _month(first, piece)
            end = _month(last, piece) if dots else start
            if end < start:
                raise ValueError(f"{piece!r}: the range ends before it starts")
            while start <= end:
                months.add(start)
                start = start.shift(1)
    if not months:
        raise ValueError("no months given: use YYYY-MM or YYYY-MM..YYYY-MM")
    return sorted(months)


def _month(text: str, piece: str) -> Month:
    text = text.strip()
    try:
        if not _MONTH.match(text):
            raise ValueError
        return Month.parse(text)
    except ValueError:
        raise ValueError(f"{piece!r} is not a month: use YYYY-MM or YYYY-MM..YYYY-MM") from None


def part_path(folder: Path, request: MonthFile) -> Path:
    """The hidden `.part` file a month is downloaded to, beside its final name."""
    return folder / f".{request.name}{PART_SUFFIX}"


def fetch_months(
    requests: Sequence[MonthFile],
    options: FetchOptions,
    progress: FetchProgress | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> list[FetchResult]:
    """Fetch each month, at most `options.concurrency` at once; results in request order.

    Ctrl-C stops every download at its next chunk and raises `FetchInterruptedError`.
    """
    options.folder.mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(options, progress or _NoProgress(), transport)
    try:
        return fetcher.run(list(requests))
    finally:
        fetcher.close()


class _NoProgress:
    def started(self, name: str, total: int | None, done: int) -> None:
        pass

    def advanced(self, name: str, received: int) -> None:
        pass

    def retrying(self, name: str, attempt: int, delay: float, reason: str) -> None:
        pass

    def finished(self, result: FetchResult) -> None:
        pass


# Why a month's download stopped, inside a worker thread.
class _Stop(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Transient(_Stop):
    """Worth another try: 5xx, timeout, cut connection."""


class _NotPublished(_Stop):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Refused(_Stop):
    """The bytes are not a month file."""


class _Failed(_Stop):
    """Not worth another try."""


class _Restart(Exception):
    """The part file does not fit the remote file any more: start over from byte 0."""


class _Cancelled(Exception):
    pass


class _Fetcher:
    def __init__(
        self,
        options: FetchOptions,
        progress: FetchProgress,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self._options = options
        self._progress = progress
        self._cancel = threading.Event()
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(options.timeout_seconds),
            follow_redirects=True,
            # Bytes as stored: a Range offset must count the bytes we write.
            headers={"Accept-Encoding": "identity", "User-Agent": "taxiops-fetch"},
            limits=httpx.Limits(max_connections=options.concurrency + 1),
        )

    def close(self) -> None:
        self._client.close()

    def run(self, requests: list[MonthFile]) -> list[FetchResult]:
        results: dict[int, FetchResult] = {}
        todo = list(enumerate(requests))
        lock = threading.Lock()

        def work() -> None:
            while not self._cancel.is_set():
                with lock:
                    if not todo:
                        return
                    index, request = todo.pop(0)
                result = self._fetch_one(request)
                results[index] = result
                self._progress.finished(result)

        # Daemon threads: a download blocked on a silent server must not hold up Ctrl-C;
        # its part file is a valid prefix whenever the process ends.
        workers = [
            threading.Thread(target=work, name=f"taxiops-fetch-{n}", daemon=True)
            for n in range(min(self._options.concurrency, len(requests)))
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.2)
        except KeyboardInterrupt:
            self._cancel.set()
            deadline = time.monotonic() + 5.0
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            done = [results[i] for i in sorted(results)]
            parts = [
                part_path(self._options.folder, r)
                for r in requests
                if part_path(self._options.folder, r).exists()
            ]
            raise FetchInterruptedError(done, parts) from None
        return [results[i] for i in sorted(results)]

    # --- one month ---------------------------------------------------------------------
    def _fetch_one(self, request: MonthFile) -> FetchResult:
        options = self._options
        target = options.folder / request.name
        started = time.monotonic()

        def result(outcome: FetchOutcome, message: str, **more: object) -> FetchResult:
            return FetchResult(
                request=request,
                outcome=outcome,
                path=target,
                message=f"{request}: {message}",
                seconds=time.monotonic() - started,
                **more,  # type: ignore[arg-type]
            )

        if not options.force and (known := self._in_ledger(request)) is not None:
            return result(
                FetchOutcome.IN_LEDGER,
                f"skipped: the watcher has it already (ledger: {known}); "
                "--force downloads it again",
            )
        part = part_path(options.folder, request)
        try:
            with _month_lock(part, self._cancel):
                if not options.force and target.exists():
                    return self._present(request, target, result)
                size, rows, resumed_from = self._download(request, part)
                os.replace(part, target)
                _fsync_folder(options.folder)
        except _Cancelled:
            return result(FetchOutcome.INTERRUPTED, f"interrupted; {part.name} kept to resume")
        except _NotPublished as exc:
            return result(FetchOutcome.NOT_PUBLISHED, self._not_published(request, exc.status))
        except _Refused as exc:
            return result(
                FetchOutcome.REFUSED,
                f"refused {options.url_for(request)}: {exc.detail}; nothing was put in "
                f"{options.folder}",
            )
        except (_Failed, _Transient) as exc:
            kept = f"; {part.name} kept to resume" if part.exists() else ""
            return result(FetchOutcome.FAILED, f"failed: {exc.detail}{kept}")
        except OSError as exc:
            return result(FetchOutcome.FAILED, f"failed: {exc}")
        resumed = f", resumed at byte {resumed_from:,}" if resumed_from else ""
        return result(
            FetchOutcome.FETCHED,
            f"fetched {target} ({size:,} bytes, {rows:,} rows{resumed})",
            size=size,
            rows=rows,
            resumed_from=resumed_from,
        )

    def _in_ledger(self, request: MonthFile) -> str | None:
        """The state and file name of this month's ledger entry, if the watcher has one."""
        path = self._options.ledger_path
        if path is None or not path.is_file():
            return None  # never create a ledger just to look into it
        from taxiops.intake._ledger import Ledger

        for entry in reversed(Ledger(path).entries()):
            if entry.taxi_type == request.taxi_type and entry.month == str(request.month):
                return f"{entry.state.value}, {entry.path.name}"
        return None

    def _present(self, request: MonthFile, target: Path, result: _ResultMaker) -> FetchResult:
        local = target.stat().st_size
        try:
            remote = self._remote_size(request)
        except _NotPublished as exc:
            remote, why = None, f"TLC answers HTTP {exc.status}"
        except _Stop as exc:
            remote, why = None, exc.detail
        if remote is None:
            return result(
                FetchOutcome.PRESENT,
                f"skipped: {target} is present ({local:,} bytes; size not compared: {why}); "
                "--force downloads it again",
                size=local,
            )
        if remote != local:
            return result(
                FetchOutcome.DIFFERENT,
                f"skipped: {target} is present with {local:,} bytes but TLC's file has "
                f"{remote:,}; --force replaces it",
                size=local,
            )
        return result(
            FetchOutcome.PRESENT,
            f"skipped: {target} is present with TLC's size ({local:,} bytes); "
            "--force downloads it again",
            size=local,
        )

    def _remote_size(self, request: MonthFile) -> int | None:
        try:
            response = self._client.head(self._options.url_for(request))
        except httpx.HTTPError as exc:
            raise _Transient(f"HEAD failed: {exc}") from None
        if response.status_code in (403, 404):
            raise _NotPublished(response.status_code)
        if response.status_code >= 400:
            raise _Failed(f"HEAD answered HTTP {response.status_code}")
        length = response.headers.get("content-length")
        return int(length) if length is not None and length.isdigit() else None

    def _not_published(self, request: MonthFile, status: int) -> str:
        url = self._options.url_for(request)
        now = datetime.now(UTC)
        this_month = Month(now.year, now.month)
        lag = self._options.publication_lag_months
        if request.month >= this_month:
            return f"not published: {request.month} has not ended yet (HTTP {status} at {url})"
        if request.month >= this_month.shift(-lag - 1):
            return (
                f"not published yet (HTTP {status} at {url}): TLC publishes a month about "
                f"{lag} months after it ends, so expect {request.month} around "
                f"{request.month.shift(lag + 1)}"
            )
        return f"not published: TLC has no such file (HTTP {status} at {url})"

    def _download(self, request: MonthFile, part: Path) -> tuple[int, int, int]:
        """Fill the part file up to the remote size and verify it; (size, rows, resumed_from)."""
        failures = 0
        started_over = False
        while True:
            offset = part.stat().st_size
            try:
                size = self._get(request, part, offset)
            except _Restart:
                os.truncate(part, 0)
                continue
            except _Transient as exc:
                # Bytes received this attempt: the link works, the retry budget starts anew.
                failures = 1 if part.stat().st_size > offset else failures + 1
                if failures > self._options.retries:
                    raise _Failed(
                        f"{exc.detail} (gave up after {self._options.retries} retries)"
                    ) from None
                delay = self._options.backoff.delay(failures)
                self._progress.retrying(request.name, failures, delay, exc.detail)
                if self._cancel.wait(delay):
                    raise _Cancelled from None
                continue
            try:
                rows = _parquet_rows(part)
            except _Refused:
                if offset > 0 and not started_over:
                    # A resumed file that does not verify: TLC replaced the month in between.
                    started_over = True
                    os.truncate(part, 0)
                    continue
                part.unlink()  # not a month file: nothing in it is worth resuming
                raise
            return size, rows, offset

    def _get(self, request: MonthFile, part: Path, offset: int) -> int:
        """One GET from `offset` into the part file; returns the size of the complete file."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._client.stream(
                "GET", self._options.url_for(request), headers=headers
            ) as response:
                start, total = self._check_response(response, offset)
                if start is None:
                    return offset  # 416 with our size: the part file is complete already
                self._progress.started(request.name, total, start)
                with part.open("r+b") as out:
                    out.seek(start)
                    out.truncate()
                    size = start
                    for chunk in response.iter_raw():  # as it arrives: a cut loses nothing
                        if self._cancel.is_set():
                            raise _Cancelled
                        out.write(chunk)
                        size += len(chunk)
                        self._progress.advanced(request.name, len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.TimeoutException as exc:
            raise _Transient(f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection lost: {exc or type(exc).__name__}") from None
        if total is not None and size != total:
            raise _Transient(f"connection closed at byte {size:,} of {total:,}")
        return size

    def _check_response(
        self, response: httpx.Response, offset: int
    ) -> tuple[int | None, int | None]:
        """Where the body starts in the file and the file's size; raises for the others."""
        status = response.status_code
        if status in (403, 404):
            raise _NotPublished(status)
        if status == 416:
            total = _content_range(response.headers.get("content-range"))[1]
            if total == offset:
                return None, total
            raise _Restart
        if status >= 500 or status in (408, 429):
            raise _Transient(f"HTTP {status}")
        if status not in (200, 206):
            raise _Failed(f"HTTP {status} from {response.url}")
        if "text/html" in response.headers.get("content-type", "").lower():
            raise _Refused("the server sent an HTML page (Content-Type text/html), not parquet")
        if status == 200:
            length = response.headers.get("content-length")
            return 0, int(length) if length is not None and length.isdigit() else None
        start, total = _content_range(response.headers.get("content-range"))
        if start != offset:
            raise _Restart
        return start, total


class _ResultMaker(Protocol):
    def __call__(self, outcome: FetchOutcome, message: str, **more: object) -> FetchResult: ...


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range` header; None where it says `*`."""
    match = _CONTENT_RANGE.match((header or "").strip())
    if match is None:
        raise _Failed(f"unreadable Content-Range {header!r}")
    start, total = match["start"], match["total"]
    return (
        None if start is None else int(start),
        None if total == "*" else int(total),
    )


def _parquet_rows(path: Path) -> int:
    """Rows of a complete parquet file; `_Refused` says what else it is."""
    with path.open("rb") as handle:
        head = handle.read(256)
        if head.lstrip()[:1] == b"<":
            raise _Refused(
                f"the server sent an HTML or XML page, not parquet (it begins {head[:40]!r})"
            )
        if head[:4] != PARQUET_MAGIC:
            raise _Refused(f"not parquet: it begins {head[:16]!r}, not PAR1")
        handle.seek(-4, os.SEEK_END)
        if handle.read(4) != PARQUET_MAGIC:
            raise _Refused("no parquet footer: the file is torn")

    import pyarrow.parquet as pq  # heavy: only once a download is complete

    try:
        with pq.ParquetFile(path) as parquet:
            rows = int(parquet.metadata.num_rows)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad footer
        raise _Refused(f"unreadable parquet footer: {exc}") from None
    if rows <= 0:
        raise _Refused("the parquet file has 0 rows")
    return rows


@contextmanager
def _month_lock(part: Path, cancel: threading.Event) -> Iterator[None]:
    """Hold an exclusive flock on the part file (created if missing) for one month.

    The holder may rename or delete the part file; a waiter then holds a lock on a file
    that is no longer at the path, notices, and locks the new one. An empty part file
    left at the end holds nothing to resume and is removed.
    """
    while True:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancel.wait(_LOCK_POLL_SECONDS):
                        raise _Cancelled from None
            if _same_file(part, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with suppress(OSError):
            if _same_file(part, fd) and os.fstat(fd).st_size == 0:
                part.unlink()
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        return path.stat().st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
