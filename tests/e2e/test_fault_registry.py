"""The registry's artifact disk is full or unwritable when a run logs its model: the run
fails clearly, is not retried, no version is registered, and the production model and its
files stay as they were.

`TAXIOPS_HOME/mlartifacts` (the local MLflow store's artifacts) is a small tmpfs of its own
(filled until ENOSPC, remounted read-only, or made immutable with `chattr +i`), so this
needs root and `mount`; where that is refused the tests skip, and
tests/unit/test_registry.py still fails a model write.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from flows.train import train_duration_model
from prefect.client.schemas.objects import State

from taxiops.app.server import LocalPrefectServer
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import Settings
from taxiops.tripfile import Month
from tests.e2e.harness import task_runs_of

TMPFS_SIZE = "16m"  # a model version takes well under 1 MB
REGISTER_TASK = "register-challenger"


def _root_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def models_disk(settings: Settings, prefect_server: LocalPrefectServer) -> Iterator[Path]:
    """The MLflow artifacts folder on a tmpfs of TMPFS_SIZE; unmounted (and mutable) after."""
    models = settings.mlflow_artifacts_dir
    assert models is not None
    models.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs; tests/unit/test_registry.py injects ENOSPC")
    mounted = _root_command(
        "mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(models)
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs ({mounted.stderr.strip()}); "
            "tests/unit/test_registry.py injects ENOSPC instead"
        )
    try:
        yield models
    finally:
        _root_command("chattr", "-R", "-i", str(models))
        _root_command("umount", "-l", str(models))


def fill(folder: Path) -> None:
    """Write a filler file until the filesystem has no byte left."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def make_read_only(folder: Path) -> None:
    remounted = _root_command("mount", "-o", "remount,ro", str(folder))
    assert remounted.returncode == 0, remounted.stderr


def make_immutable(folder: Path) -> None:
    changed = _root_command("chattr", "+i", *(str(p) for p in folder.iterdir()))
    if changed.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {changed.stderr.strip()}")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "filler"
    }


def train(path: Path) -> State[Any]:
    return cast("State[Any]", train_duration_model(new_file=str(path), return_state=True))


@pytest.mark.parametrize(
    ("break_disk", "reason"),
    [
        (fill, "No space left on device"),
        (make_read_only, "Read-only file system"),
        (make_immutable, "Operation not permitted"),
    ],
    ids=["disk-full", "read-only", "immutable"],
)
def test_an_unwritable_registry_fails_the_run_and_keeps_production(
    settings: Settings,
    prefect_server: LocalPrefectServer,
    models_disk: Path,
    break_disk: Callable[[Path], None],
    reason: str,
) -> None:
    first, second = (
        write_synth_month(settings.incoming_dir, "green", Month.parse(m), rows=2_000, seed=i)
        for i, m in enumerate(["2023-01", "2023-02"])
    )
    assert train(first).is_completed()
    registry = ModelRegistry.from_settings(settings)
    champion = registry.production("green")
    assert champion is not None
    production = snapshot(models_disk)
    assert any(name.endswith("booster.ubj") for name in production), production.keys()

    break_disk(models_disk)
    state = train(second)

    assert state.is_failed()
    message = str(state.message)
    assert f"{REGISTER_TASK} failed" in message and reason in message, message
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    register = [
        t
        for t in task_runs_of(prefect_server.api_url, flow_run_id)
        if t.name.startswith(REGISTER_TASK)
    ]
    assert [t.run_count for t in register] == [1], "a registry error is not retried"
    after = snapshot(models_disk)
    assert {name: after.get(name) for name in production} == production
    assert registry.production("green") == champion
    assert [v.name for v in registry.versions("green")] == [champion.name]
