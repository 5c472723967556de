"""`taxiops fetch` against a loopback TLC mirror: cuts, 5xx, 404, HTML, Ctrl-C, two at once.

Every test runs on synthetic months (always) and on the real TLC months of
../shared/data (`realdata`, skipped when absent), served under TLC's URL layout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from watchdog.observers import Observer

from taxiops.intake import Backoff, FileTouched, IncomingFile, IncomingFileHandler, Ledger
from taxiops.intake.fetch import (
    FetchOptions,
    FetchOutcome,
    FetchResult,
    MonthFile,
    fetch_months,
    parse_months,
    part_path,
)
from taxiops.ml import write_synth_month
from taxiops.tripfile import Month, sha256_of
from tests.conftest import SHARED_DATA
from tests.e2e.harness import wait_until
from tests.intake.tlc_mirror import TLCMirror

JAN = MonthFile("green", Month(2023, 1))
FEB = MonthFile("green", Month(2023, 2))
FAST_BACKOFF = Backoff(0.01, 2.0, 0.05)


@dataclass(frozen=True)
class Source:
    """The folder the mirror serves and which kind of months it holds."""

    folder: Path
    kind: str

    def of(self, request: MonthFile) -> Path:
        return self.folder / request.name


@pytest.fixture(params=["synthetic", pytest.param("real", marks=pytest.mark.realdata)])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    if request.param == "real":
        real = Path(os.environ.get("TAXIOPS_SHARED_DATA", SHARED_DATA))
        if not all((real / m.name).is_file() for m in (JAN, FEB)):
            pytest.skip(f"real TLC months not found in {real} (set TAXIOPS_SHARED_DATA)")
        return Source(real, "real")
    folder = tmp_path / "source"
    for seed, wanted in enumerate((JAN, FEB)):
        write_synth_month(folder, wanted.taxi_type, wanted.month, rows=20_000, seed=seed)
    return Source(folder, "synthetic")


@pytest.fixture
def mirror(source: Source) -> Iterator[TLCMirror]:
    with TLCMirror(source.folder) as served:
        yield served


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


def options(mirror: TLCMirror, folder: Path, **more: object) -> FetchOptions:
    more.setdefault("backoff", FAST_BACKOFF)
    more.setdefault("timeout_seconds", 10.0)
    return FetchOptions(base_url=mirror.base_url, folder=folder, **more)  # type: ignore[arg-type]


def only(results: list[FetchResult]) -> FetchResult:
    assert len(results) == 1, results
    return results[0]


def assert_landed_whole(source: Source, folder: Path, request: MonthFile) -> None:
    assert sha256_of(folder / request.name) == sha256_of(source.of(request))
    assert not part_path(folder, request).exists()


# --- months on the command line ----------------------------------------------------------
def test_parse_months_ranges_lists_and_refusals() -> None:
    assert parse_months(["2023-11..2024-02"]) == [
        Month(2023, 11),
        Month(2023, 12),
        Month(2024, 1),
        Month(2024, 2),
    ]
    assert parse_months(["2024-03", "2024-01,2024-03"]) == [Month(2024, 1), Month(2024, 3)]
    for bad in ("2024-13", "2024-3", "march", "2024-05..2024-01", ""):
        with pytest.raises(ValueError, match="month|range"):
            parse_months([bad])


# --- downloads -----------------------------------------------------------------------------
def test_months_land_whole_and_verified(source: Source, mirror: TLCMirror, incoming: Path) -> None:
    results = fetch_months([JAN, FEB], options(mirror, incoming))
    assert [r.outcome for r in results] == [FetchOutcome.FETCHED, FetchOutcome.FETCHED]
    for result, request in zip(results, (JAN, FEB), strict=True):
        assert_landed_whole(source, incoming, request)
        assert result.rows is not None and result.rows > 0
        assert result.size == source.of(request).stat().st_size
    assert sorted(p.name for p in incoming.iterdir()) == [JAN.name, FEB.name]


def test_connection_cut_mid_file_resumes_with_range(
    source: Source, mirror: TLCMirror, incoming: Path
) -> None:
    cut = source.of(JAN).stat().st_size // 2
    mirror.cut_after[JAN.name] = cut
    result = only(fetch_months([JAN], options(mirror, incoming)))
    assert result.outcome is FetchOutcome.FETCHED, result.message
    assert 0 < result.resumed_from <= cut
    gets = mirror.gets(JAN.name)
    resumed = f"bytes={result.resumed_from}-"
    assert [(g.range, g.status) for g in gets] == [(None, 200), (resumed, 206)]
    assert_landed_whole(source, incoming, JAN)


def test_500_then_200_is_retried(source: Source, mirror: TLCMirror, incoming: Path) -> None:
    mirror.fail_first[JAN.name] = (500, 2)
    retries: list[str] = []

    class Recorder:
        def started(self, name: str, total: int | None, done: int) -> None:
            pass

        def advanced(self, name: str, received: int) -> None:
            pass

        def retrying(self, name: str, attempt: int, delay: float, reason: str) -> None:
            retries.append(f"{name} {attempt} {reason}")

        def finished(self, result: FetchResult) -> None:
            pass

    result = only(fetch_months([JAN], options(mirror, incoming), Recorder()))
    assert result.outcome is FetchOutcome.FETCHED, result.message
    assert [g.status for g in mirror.gets(JAN.name)] == [500, 500, 200]
    assert retries == [f"{JAN.name} 1 HTTP 500", f"{JAN.name} 2 HTTP 500"]
    assert_landed_whole(source, incoming, JAN)


def test_5xx_forever_gives_up_with_one_line(mirror: TLCMirror, incoming: Path) -> None:
    mirror.fail_first[JAN.name] = (503, 100)
    result = only(fetch_months([JAN], options(mirror, incoming, retries=2)))
    assert result.outcome is FetchOutcome.FAILED
    assert "HTTP 503" in result.message and "gave up after 2 retries" in result.message
    assert len(mirror.gets(JAN.name)) == 3
    assert list(incoming.iterdir()) == []


def test_404_names_the_month_in_one_line(mirror: TLCMirror, incoming: Path, tmp_path: Path) -> None:
    old = MonthFile("green", Month(2019, 7))
    result = only(fetch_months([old], options(mirror, incoming)))
    assert result.outcome is FetchOutcome.NOT_PUBLISHED
    assert result.message.startswith("green 2019-07: not published: TLC has no such file")
    assert "HTTP 404" in result.message
    assert list(incoming.iterdir()) == []

    # A month that ended last month: not out yet, said as such, by the real command.
    today = time.gmtime()
    recent = Month(today.tm_year, today.tm_mon).shift(-1)
    run = run_fetch(mirror, tmp_path, "green", str(recent))
    assert run.returncode == 1
    lines = [line for line in run.stdout.splitlines() if str(recent) in line]
    assert len(lines) == 1, run.stdout
    assert "not published yet (HTTP 404" in lines[0]
    assert "TLC publishes a month about 2 months after it ends" in lines[0]
    assert "Traceback" not in run.stdout + run.stderr
    assert list(incoming.iterdir()) == []


@pytest.mark.parametrize("content_type", ["text/html", "binary/octet-stream"])
def test_html_page_served_as_parquet_is_refused_before_the_rename(
    mirror: TLCMirror, incoming: Path, content_type: str
) -> None:
    mirror.html[JAN.name] = content_type
    result = only(fetch_months([JAN], options(mirror, incoming)))
    assert result.outcome is FetchOutcome.REFUSED
    assert "HTML" in result.message and JAN.name in result.message
    assert list(incoming.iterdir()) == []  # no month file, no part file


def test_present_or_in_ledger_is_skipped_and_force_fetches_again(
    source: Source, mirror: TLCMirror, incoming: Path, tmp_path: Path
) -> None:
    fetch_months([JAN], options(mirror, incoming))
    mirror.requests.clear()
    again = only(fetch_months([JAN], options(mirror, incoming)))
    assert again.outcome is FetchOutcome.PRESENT, again.message
    assert "--force" in again.message
    assert [(r.method, r.status) for r in mirror.requests] == [("HEAD", 200)]

    forced = only(fetch_months([JAN], options(mirror, incoming, force=True)))
    assert forced.outcome is FetchOutcome.FETCHED
    assert [g.status for g in mirror.gets(JAN.name)] == [200]
    assert_landed_whole(source, incoming, JAN)

    # Known to the watcher (trained and since moved away): skipped without asking TLC.
    ledger = Ledger(tmp_path / "home" / "ledger.sqlite3")
    ledger.record_seen(
        IncomingFile(tmp_path / "elsewhere" / FEB.name, "green", FEB.month, "ab" * 32, 10)
    )
    mirror.requests.clear()
    known = only(fetch_months([FEB], options(mirror, incoming, ledger_path=ledger.path)))
    assert known.outcome is FetchOutcome.IN_LEDGER
    assert "ledger: seen" in known.message
    assert mirror.requests == []
    assert not (incoming / FEB.name).exists()


def test_different_size_in_folder_is_not_overwritten(mirror: TLCMirror, incoming: Path) -> None:
    write_synth_month(incoming, "green", JAN.month, rows=500)
    before = sha256_of(incoming / JAN.name)
    result = only(fetch_months([JAN], options(mirror, incoming)))
    assert result.outcome is FetchOutcome.DIFFERENT
    assert "--force replaces it" in result.message
    assert sha256_of(incoming / JAN.name) == before


# --- the real command: Ctrl-C, two at once ------------------------------------------------
def fetch_env(mirror: TLCMirror, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXIOPS_", "PREFECT_"))}
    env.update(
        TAXIOPS_TLC_BASE_URL=mirror.base_url,
        TAXIOPS_HOME=str(root / "home"),
        TAXIOPS_INCOMING_DIR=str(root / "incoming"),
        TAXIOPS_FETCH_RETRY_DELAY_SECONDS="0.05",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_fetch(mirror: TLCMirror, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taxiops", "fetch", *args],
        cwd=root,
        env=fetch_env(mirror, root),
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_fetch(mirror: TLCMirror, root: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taxiops", "fetch", *args],
            cwd=root,
            env=fetch_env(mirror, root),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def progress_bytes(log: Path, name: str) -> list[float]:
    """MiB done, from the plain progress lines `<name>: 0.25 MiB of 1.36 MiB ...`."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(f"{name}: ") and " of " in line:
            found.append(float(line.split(": ", 1)[1].split(" MiB", 1)[0]))
    return found


def test_slow_server_progress_advances_and_ctrl_c_leaves_a_resumable_part(
    source: Source, mirror: TLCMirror, incoming: Path, tmp_path: Path
) -> None:
    size = source.of(JAN).stat().st_size
    mirror.rate_bytes_per_second = size / 8  # about 8 s for the whole month
    log = tmp_path / "fetch.log"
    process = start_fetch(mirror, tmp_path, log, "green", "2023-01")
    try:
        wait_until(lambda: len(set(progress_bytes(log, JAN.name))) >= 3, 60, "three progress lines")
        done = progress_bytes(log, JAN.name)
        assert done == sorted(done) and done[-1] > done[0], done
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert "Traceback" not in output
    assert "run the same command again to resume" in output
    part = part_path(incoming, JAN)
    assert [p.name for p in incoming.iterdir()] == [part.name]  # no month file, only the part
    kept = part.read_bytes()
    assert 0 < len(kept) < size
    assert source.of(JAN).read_bytes()[: len(kept)] == kept  # a prefix: resumable

    mirror.rate_bytes_per_second = None
    mirror.requests.clear()
    run = run_fetch(mirror, tmp_path, "green", "2023-01")
    assert run.returncode == 0, run.stdout + run.stderr
    assert [g.range for g in mirror.gets(JAN.name)] == [f"bytes={len(kept)}-"]
    assert f"resumed at byte {len(kept):,}" in run.stdout
    assert_landed_whole(source, incoming, JAN)


def test_two_fetches_of_the_same_months_at_once_land_each_file_once(
    source: Source, mirror: TLCMirror, incoming: Path, tmp_path: Path
) -> None:
    total = sum(source.of(m).stat().st_size for m in (JAN, FEB))
    mirror.rate_bytes_per_second = total / 3
    touches: list[FileTouched] = []
    observer = Observer()
    observer.schedule(IncomingFileHandler(touches.append), str(incoming))
    observer.start()
    try:
        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        processes = [
            start_fetch(mirror, tmp_path, log, "green", "2023-01..2023-02") for log in logs
        ]
        codes = [p.wait(120) for p in processes]
        outputs = [log.read_text() for log in logs]
        assert codes == [0, 0], outputs
        # Events arrive in order: once the sentinel's is in, every rename's is too.
        (incoming / "sentinel").touch()
        wait_until(
            lambda: any(t.path.name == "sentinel" for t in touches), 10, "the sentinel event"
        )
    finally:
        observer.stop()
        observer.join(10)
    for request in (JAN, FEB):
        lines = [
            line for out in outputs for line in out.splitlines() if line.startswith(f"{request}: ")
        ]
        assert sorted(line.split(": ")[1].split(" ")[0] for line in lines) == [
            "fetched",
            "skipped",
        ], lines
        assert len(mirror.gets(request.name)) == 1
        moved_in = [t for t in touches if t.path.name == request.name and t.kind == "moved"]
        assert len(moved_in) == 1, touches
        assert_landed_whole(source, incoming, request)
    # The watcher's handler never reported a part file: in flight names are ignored.
    reported = {t.path.name for t in touches} - {incoming.name}  # the folder's own modifications
    assert reported == {JAN.name, FEB.name, "sentinel"}


def test_rich_progress_shows_bytes_rate_and_total(
    source: Source, mirror: TLCMirror, incoming: Path
) -> None:
    import io

    from rich.console import Console

    from taxiops.app.progress import RichFetchProgress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    with RichFetchProgress(console) as progress:
        results = fetch_months([JAN, FEB], options(mirror, incoming), progress)
    text = screen.getvalue()
    assert all(r.outcome is FetchOutcome.FETCHED for r in results)
    for line in ("total", JAN.name, FEB.name, "MiB", "/s", f"{JAN}: fetched"):
        assert line in text, text[-2000:]
