"""The model registry on a real MLflow store (SQLite): versions, idempotency, the champion
alias, the promotion rule, and a failed write that leaves production as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tests.stores import seed_mlflow_store

from taxiops.errors import RegistryError
from taxiops.ml import (
    DurationModel,
    Metrics,
    TrainingParams,
    load_trips,
    train_model,
    write_synth_month,
)
from taxiops.registry import (
    CHAMPION_ALIAS,
    Lock,
    ModelCard,
    ModelRegistry,
    ModelVersion,
    Promotion,
    TrainingRecord,
    model_name,
    rmse_comparison,
    should_promote,
)
from taxiops.tripfile import Month, parse_trip_file

_LOCKS: dict[str, threading.Lock] = {}


@contextmanager
def in_process_lock(taxi_type: str) -> Iterator[None]:
    """The lock's contract within one process (the flows use a Prefect limit)."""
    with _LOCKS.setdefault(taxi_type, threading.Lock()):
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DurationModel:
    folder = tmp_path_factory.mktemp("synth")
    path = write_synth_month(folder, "green", Month(2023, 1), rows=2_000, seed=1)
    trips = load_trips(parse_trip_file(path))
    return train_model([trips.frame], TrainingParams())


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    seed_mlflow_store(tmp_path)
    return ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


def card(key: str, rmse: float = 5.0, month: str = "2023-02") -> ModelCard:
    return ModelCard(
        taxi_type="green",
        model_key=key,
        validation_month=month,
        train_months=["2023-01"],
        data_sha256={"green_tripdata_2023-01.parquet": "ab" * 32},
        params={"max_depth": 6},
        code_version="test",
        metrics={"rmse": rmse, "mae": rmse / 2},
        train_rows=2_000,
        val_rows=1_000,
    )


def record(
    key: str, rmse: float = 5.0, month: str = "2023-02", training: str = ""
) -> TrainingRecord:
    return TrainingRecord(
        card=replace(card(key, rmse, month), training_key=training),
        params={"max_depth": "6"},
        tags={"taxi_type": "green"},
        datasets=[],
        pickup_column="lpep_pickup_datetime",
    )


def scores(**rmse_by_version: float) -> Callable[[ModelVersion], Metrics]:
    """A rescore function that records what it was asked to score."""

    def rescore(version: ModelVersion) -> Metrics:
        asked.append(version.name)
        return Metrics(rmse=rmse_by_version[version.name], mae=1.0, rows=10)

    asked: list[str] = []
    rescore.asked = asked  # type: ignore[attr-defined]
    return rescore


def m(rmse: float) -> Metrics:
    return Metrics(rmse=rmse, mae=rmse / 2, rows=10)


def promote(
    registry: ModelRegistry,
    challenger: ModelVersion,
    rmse: float,
    champion: ModelVersion | None = None,
    champion_rmse: float | None = None,
    rescore: Callable[[ModelVersion], Metrics] | None = None,
    by: str = "run-1",
    lock: Lock = in_process_lock,
) -> Promotion:
    return registry.promote_if_better(
        challenger,
        m(rmse),
        champion=champion,
        champion_metrics=None if champion_rmse is None else m(champion_rmse),
        rescore=rescore or scores(),
        lock=lock,
        decided_by=by,
    )


def test_versions_are_numbered_kept_and_registered_once_per_card(
    registry: ModelRegistry, model: DurationModel
) -> None:
    first = registry.register(model, record("a"))
    second = registry.register(model, record("b"))
    again = registry.register(model, record("a"))

    assert [v.name for v in registry.versions("green")] == ["v1", "v2"]
    assert again == first and second.number == 2
    assert registry.version("green", 2).card.model_key == "b"
    assert registry.taxi_types() == ["green"]
    assert replace(first.card, created_at="") == replace(card("a"), created_at="")


def test_registering_leaves_no_tracking_uri_in_the_environment(
    registry: ModelRegistry, model: DurationModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's fluent API exports its URI for subprocesses; a flow's children (and its own
    later settings) must not inherit the store of an earlier registration."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)

    registry.register(model, record("a"))

    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_registered_model_predicts_like_the_original(
    registry: ModelRegistry, model: DurationModel, tmp_path: Path
) -> None:
    version = registry.register(model, record("a"))
    path = write_synth_month(tmp_path / "synth", "green", Month(2023, 2), rows=500, seed=2)
    frame = load_trips(parse_trip_file(path)).frame

    loaded = registry.load_model(version)

    assert (loaded.predict(frame) == model.predict(frame)).all()


def test_first_model_is_promoted_and_a_worse_one_is_not(
    registry: ModelRegistry, model: DurationModel
) -> None:
    v1 = registry.register(model, record("a"))
    v2 = registry.register(model, record("b"))

    first = promote(registry, v1, 5.0)
    worse = promote(registry, v2, 5.5, champion=v1, champion_rmse=5.0)

    assert first.promoted and first.reason == "first green model"
    assert not worse.promoted and "worse" in worse.reason
    assert worse.production == "v1"
    assert registry.production("green") == v1
    alias = MlflowClient(registry.tracking_uri).get_model_version_by_alias(
        model_name("green"), CHAMPION_ALIAS
    )
    assert str(alias.version) == "1"


def test_a_champion_that_changed_meanwhile_is_rescored_before_judging(
    registry: ModelRegistry, model: DurationModel
) -> None:
    v1, v2, v3 = (registry.register(model, record(key)) for key in "abc")
    promote(registry, v1, 5.0)

    # v2 and v3 were both judged against "no champion" while v1 got promoted.
    rescore = scores(v1=4.0)
    lost = promote(registry, v2, 4.5, rescore=rescore, by="run-2")
    won = promote(registry, v3, 3.5, rescore=rescore, by="run-3")

    assert rescore.asked == ["v1", "v1"]  # type: ignore[attr-defined]
    assert not lost.promoted and "worse than v1's 4.000" in lost.reason
    assert "production changed during this run (None -> v1)" in lost.reason
    assert won.promoted and won.replaced == "v1"
    assert registry.production("green") == v3
    recorded = registry.promotion_of(v3)
    assert recorded is not None and (recorded["by"], recorded["replaced"]) == ("run-3", 1)


def test_a_backfill_never_replaces_production(
    registry: ModelRegistry, model: DurationModel
) -> None:
    newer = registry.register(model, record("a"))
    older = registry.register(model, record("b", month="2023-01 (validation)"))
    promote(registry, newer, 5.0)

    backfill = promote(registry, older, 1.0, champion=newer, champion_rmse=5.0)

    assert not backfill.promoted and "backfill" in backfill.reason
    assert registry.production("green") == newer


def test_the_same_training_judged_on_new_bytes_of_the_month_is_not_a_new_champion(
    registry: ModelRegistry, model: DurationModel
) -> None:
    """A replaced month file: its run trains the same months again (the same weights) and
    judges them on the new bytes. A tie must not post "New champion" for the old model."""
    v1 = registry.register(model, record("a", training="t1"))
    promote(registry, v1, 5.0)
    v2 = registry.register(model, record("b", training="t1"))  # other validation bytes
    v3 = registry.register(model, record("c", training="t2"))  # another training

    same = promote(registry, v2, 5.0, champion=v1, champion_rmse=5.0)
    assert not same.promoted and "the same training as v1" in same.reason
    assert "equals v1's 5.000" in same.reason
    assert registry.production("green") == v1
    assert promote(registry, v3, 5.0, champion=v1, champion_rmse=5.0).promoted


def test_production_itself_is_not_promoted_again_but_a_retried_decision_is_recognised(
    registry: ModelRegistry, model: DurationModel
) -> None:
    v1 = registry.register(model, record("a"))
    promote(registry, v1, 5.0, by="run-1")

    retried = promote(registry, v1, 5.0, by="run-1")  # the same decision, after a fault
    itself = promote(registry, v1, 5.0, champion=v1, champion_rmse=5.0, by="run-2")

    assert retried.promoted
    assert not itself.promoted and "production model itself" in itself.reason
    assert itself.production == "v1"


def test_a_rerun_of_the_production_model_does_not_wait_for_the_lock(
    registry: ModelRegistry, model: DurationModel
) -> None:
    """A re-run changes nothing, so it must not queue behind other runs' decisions."""
    v1 = registry.register(model, record("a"))
    promote(registry, v1, 5.0, by="run-1")

    @contextmanager
    def held(taxi_type: str) -> Iterator[None]:
        raise AssertionError(f"asked for the {taxi_type} lock")
        yield

    again = promote(registry, v1, 5.0, champion=v1, champion_rmse=5.0, by="run-2", lock=held)
    assert not again.promoted and again.production == "v1"
    v2 = registry.register(model, record("b"))
    with pytest.raises(AssertionError, match="green lock"):  # a real decision still asks
        promote(registry, v2, 4.0, champion=v1, champion_rmse=5.0, by="run-3", lock=held)


def test_a_failed_model_write_leaves_no_version_and_production_intact(
    registry: ModelRegistry, model: DurationModel
) -> None:
    v1 = registry.register(model, record("a"))
    promote(registry, v1, 5.0)

    class FullDisk:
        def save(self, directory: Path) -> None:
            directory.mkdir(parents=True)
            (directory / "half-written").write_bytes(b"x")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        registry.register(FullDisk(), record("b"))  # type: ignore[arg-type]

    assert [v.name for v in registry.versions("green")] == ["v1"]
    assert registry.production("green") == v1
    runs = MlflowClient(registry.tracking_uri).search_runs([registry._experiment_id()])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    # The same card again is trained into a new, finished run, not the failed one.
    v2 = registry.register(model, record("b"))
    assert v2.number == 2 and v2.run_id not in {r.info.run_id for r in runs}


def test_an_alias_on_a_version_taxiops_did_not_register_is_a_registry_error(
    registry: ModelRegistry, model: DurationModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = registry.register(model, record("a"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)  # resolves `models:/`
    client = MlflowClient(registry.tracking_uri)
    source = client.get_run(v1.run_id).data.tags["taxiops.model_uri"]
    foreign = client.create_model_version(model_name("green"), source, run_id=v1.run_id)
    client.set_registered_model_alias(model_name("green"), CHAMPION_ALIAS, foreign.version)

    with pytest.raises(RegistryError, match="which taxiops did not register"):
        registry.production("green")


def test_the_store_identity_is_stable_and_changes_with_a_reset_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ModelRegistry(uri).ref()
    assert ModelRegistry(uri).ref() == first
    (tmp_path / "mlflow.db").unlink()
    # A new process, as each flow run is (MLflow keeps a store's engine for its process).
    script = "import sys; from taxiops.registry import ModelRegistry as R; print(R(sys.argv[1]).ref().identity)"
    after = subprocess.run(
        [sys.executable, "-c", script, uri], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert after and after != first.identity


def test_should_promote_only_when_no_worse() -> None:
    champion = Metrics(rmse=5.0, mae=3.0, rows=10)
    assert should_promote(Metrics(rmse=5.0, mae=9.0, rows=10), champion)
    assert should_promote(Metrics(rmse=4.9, mae=3.0, rows=10), champion)
    assert not should_promote(Metrics(rmse=5.01, mae=1.0, rows=10), champion)
    assert should_promote(Metrics(rmse=99.0, mae=9.0, rows=10), None)


def test_rmse_comparison_says_better_worse_or_equal() -> None:
    assert rmse_comparison(4.0, "v1", 5.0) == "RMSE 4.000 is better than v1's 5.000 by 1.000"
    assert rmse_comparison(5.0001, "v1", 5.0).endswith("by less than 0.001")
    assert rmse_comparison(5.0, "v1", 5.0) == "RMSE 5.000 equals v1's 5.000"


_COUNT_SCANS = """
import os, sys
from pathlib import Path
import importlib_metadata

scans = []
scan = importlib_metadata.packages_distributions
importlib_metadata.packages_distributions = lambda: scans.append(1) or scan()

from taxiops.ml import TrainingParams, load_trips, train_model, write_synth_month
from taxiops.registry import ModelRegistry, check_model_requirements
from taxiops.tripfile import Month, parse_trip_file
from tests.stores import seed_mlflow_store
from tests.unit.test_registry import record

folder = Path(sys.argv[1])
seed_mlflow_store(folder)
month = write_synth_month(folder, "green", Month(2023, 1), rows=500, seed=1)
model = train_model([load_trips(parse_trip_file(month)).frame], TrainingParams())
registry = ModelRegistry(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")


def scans_registering_in_a_fork(key):
    read, write = os.pipe()
    if os.fork() == 0:  # as the fork server's runs start
        before = len(scans)
        registry.register(model, record(key))
        os.write(write, str(len(scans) - before).encode())
        os._exit(0)
    os.close(write)
    return int(os.read(read, 16) or b"-1")


print(scans_registering_in_a_fork("a"), end=" ")
check_model_requirements()
print(scans_registering_in_a_fork("b"))
"""


def test_a_process_forked_after_the_requirements_check_registers_without_scanning_packages(
    tmp_path: Path,
) -> None:
    """MLflow maps every installed distribution to its modules (~0.4 s) to check a logged
    model's requirements; `check_model_requirements` does it once for the forks to come."""
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_SCANS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "0"], done.stderr[-3000:]
