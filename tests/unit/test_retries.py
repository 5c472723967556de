"""Which faults the tasks retry: what a retry may cure, never bad data or a missing file."""

from __future__ import annotations

import errno

import httpx
import pytest
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.pipeline.tasks import is_transient


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/v2/concurrency_limits/increment")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def _caused_by(cause: BaseException) -> BaseException:
    """What Prefect raises when a concurrency slot cannot be had, from `cause`."""
    try:
        raise ConcurrencySlotAcquisitionError("Unable to acquire concurrency slots") from cause
    except ConcurrencySlotAcquisitionError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        pytest.param(ConnectionResetError("storage went away"), True, id="connection-reset"),
        pytest.param(TimeoutError("slow disk"), True, id="timeout"),
        pytest.param(OSError(errno.EIO, "I/O error"), True, id="eio"),
        pytest.param(OSError(errno.ENOENT, "gone"), False, id="enoent"),
        pytest.param(OSError(errno.ENOTDIR, "not a dir"), False, id="enotdir"),
        pytest.param(MemoryError(), False, id="memory"),
        pytest.param(
            DataValidationError("x.parquet", ValidationRule.MISSING_COLUMN, "no trip_distance"),
            False,
            id="bad-data",
        ),
        pytest.param(httpx.ConnectError("refused"), True, id="api-refused"),
        pytest.param(httpx.ReadTimeout("slow"), True, id="api-timeout"),
        pytest.param(_status_error(503), True, id="api-503"),
        pytest.param(_status_error(429), True, id="api-429"),
        pytest.param(_status_error(404), False, id="api-404"),
        pytest.param(_status_error(422), False, id="api-422"),
        pytest.param(_caused_by(_status_error(503)), True, id="lock-slot-503"),
        pytest.param(_caused_by(_status_error(404)), False, id="lock-slot-404"),
        pytest.param(_caused_by(TimeoutError("600 s")), False, id="lock-slot-timeout"),
        pytest.param(ValueError("a bug"), False, id="bug"),
    ],
)
def test_only_faults_a_retry_may_cure_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
