"""The model registry on real files: versions, idempotency, promotion, atomicity."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from taxiops.errors import RegistryError
from taxiops.ml import (
    DurationModel,
    Metrics,
    TrainingParams,
    load_trips,
    train_model,
    write_synth_month,
)
from taxiops.ml.model import BOOSTER_FILE, ENCODER_FILE, MODEL_FILE
from taxiops.registry._store import (
    CARD_FILE,
    PRODUCTION_FILE,
    ModelCard,
    ModelRegistry,
    ModelVersion,
    rmse_comparison,
    should_promote,
)
from taxiops.tripfile import Month, parse_trip_file


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DurationModel:
    folder = tmp_path_factory.mktemp("synth")
    path = write_synth_month(folder, "green", Month(2023, 1), rows=2_000, seed=1)
    trips = load_trips(parse_trip_file(path))
    return train_model([trips.frame], TrainingParams())


def card(key: str, rmse: float = 5.0) -> ModelCard:
    return ModelCard(
        taxi_type="green",
        model_key=key,
        validation_month="2023-02",
        train_months=["2023-01"],
        data_sha256={"green_tripdata_2023-01.parquet": "ab" * 32},
        params={"max_depth": 6},
        code_version="test",
        metrics={"rmse": rmse, "mae": rmse / 2},
        train_rows=2_000,
        val_rows=1_000,
    )


def test_versions_are_numbered_and_kept(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register(model, card("a"))
    second = registry.register(model, card("b"))

    assert [v.name for v in registry.versions("green")] == ["v0001", "v0002"]
    assert (first.number, second.number) == (1, 2)
    assert registry.version("green", 2).card.model_key == "b"
    assert registry.taxi_types() == ["green"]


def test_registering_the_same_model_key_twice_returns_the_first_version(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register(model, card("same"))
    again = registry.register(model, card("same"))

    assert again == first
    assert len(registry.versions("green")) == 1


def test_a_registered_model_predicts_like_the_original(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    version = registry.register(model, card("a"))
    path = write_synth_month(tmp_path / "synth", "green", Month(2023, 2), rows=500, seed=2)
    frame = load_trips(parse_trip_file(path)).frame

    loaded = registry.load_model(version)

    assert (loaded.predict(frame) == model.predict(frame)).all()


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


def test_first_model_is_promoted_and_a_worse_one_is_not(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    v2 = registry.register(model, card("b"))
    never = scores()

    first = registry.promote_if_better(
        v1, m(5.0), champion=None, champion_metrics=None, rescore=never
    )
    worse = registry.promote_if_better(
        v2, m(5.5), champion=v1, champion_metrics=m(5.0), rescore=never
    )

    assert first.promoted and first.reason == "first green model"
    assert not worse.promoted and "worse" in worse.reason and worse.production == "v0001"
    assert registry.production("green") == v1 and never.asked == []  # type: ignore[attr-defined]


def test_a_champion_that_changed_meanwhile_is_rescored_before_judging(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    v1, v2, v3 = (registry.register(model, card(key)) for key in "abc")
    registry.promote_if_better(v1, m(5.0), champion=None, champion_metrics=None, rescore=scores())

    # v2 and v3 were both judged against "no champion" while v1 got promoted.
    rescore = scores(v0001=4.0)
    lost = registry.promote_if_better(
        v2, m(4.5), champion=None, champion_metrics=None, rescore=rescore
    )
    won = registry.promote_if_better(
        v3, m(3.5), champion=None, champion_metrics=None, rescore=rescore
    )

    assert rescore.asked == ["v0001", "v0001"]  # type: ignore[attr-defined]
    assert not lost.promoted and "worse than v0001's 4.000" in lost.reason
    assert won.promoted and registry.production("green") == v3


def test_a_backfill_never_replaces_production(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)
    newer = registry.register(model, card("a"))
    older = registry.register(model, replace(card("b"), validation_month="2023-01 (validation)"))
    registry.promote_if_better(
        newer, m(5.0), champion=None, champion_metrics=None, rescore=scores()
    )

    backfill = registry.promote_if_better(
        older, m(1.0), champion=newer, champion_metrics=m(5.0), rescore=scores()
    )

    assert not backfill.promoted and "backfill" in backfill.reason
    assert registry.production("green") == newer


def test_champion_for_a_challenger_already_in_production_is_what_it_replaced(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    v2 = registry.register(model, card("b"))
    registry.promote_if_better(v1, m(5.0), champion=None, champion_metrics=None, rescore=scores())

    assert registry.champion_for(v2) == v1
    registry.promote_if_better(v2, m(4.0), champion=v1, champion_metrics=m(5.0), rescore=scores())
    assert registry.champion_for(v2) == v1  # a re-run compares the same pair again
    assert registry.champion_for(v1) == v2


def test_the_registry_identity_is_stable_and_changes_with_a_new_registry(tmp_path: Path) -> None:
    first = ModelRegistry(tmp_path / "models").ref()
    assert ModelRegistry(tmp_path / "models").ref() == first
    shutil.rmtree(tmp_path / "models")
    assert ModelRegistry(tmp_path / "models").ref().cache_fingerprint != first.cache_fingerprint


def test_should_promote_only_when_no_worse() -> None:
    champion = Metrics(rmse=5.0, mae=3.0, rows=10)
    assert should_promote(Metrics(rmse=5.0, mae=9.0, rows=10), champion)
    assert should_promote(Metrics(rmse=4.9, mae=3.0, rows=10), champion)
    assert not should_promote(Metrics(rmse=5.01, mae=1.0, rows=10), champion)
    assert should_promote(Metrics(rmse=99.0, mae=9.0, rows=10), None)


def test_failed_write_leaves_no_partial_version(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)

    class BrokenModel:
        def save(self, directory: Path) -> None:
            (directory / "half-written").write_bytes(b"x")
            raise OSError(28, "No space left on device")

    v1 = registry.register(model, card("a"))
    registry.promote_if_better(v1, m(5.0), champion=None, champion_metrics=None, rescore=scores())

    with pytest.raises(RegistryError, match="cannot write version v0002.*No space left"):
        registry.register(BrokenModel(), card("b"))  # type: ignore[arg-type]

    assert [v.name for v in registry.versions("green")] == ["v0001"]
    production = registry.production("green")
    assert production is not None and production.name == "v0001"
    assert not [p for p in (tmp_path / "green").iterdir() if p.name.startswith(".staging")]


def test_unreadable_card_is_a_registry_error(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)
    version = registry.register(model, card("a"))
    (version.path / "card.json").write_text("{not json")

    with pytest.raises(RegistryError, match="unreadable model card"):
        registry.versions("green")


def test_card_round_trips(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)
    original = card("a")
    version = registry.register(model, original)
    assert replace(version.card, created_at=original.created_at) == original


# --- a full disk at every write --------------------------------------------------------
# The fallback of tests/e2e/test_fault_registry.py (a real full tmpfs, which needs root
# and mount): ENOSPC is injected where each registry file lands (the rename of its
# temp file), so atomicity is tested on every machine.
def fill_disk_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the write of `name` (its temp file's rename into place) fail with ENOSPC."""
    real_replace, real_rename = os.replace, os.rename

    def check(destination: str | os.PathLike[str]) -> None:
        if Path(destination).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))

    def replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
        check(destination)
        real_replace(source, destination)

    def rename(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
        check(destination)
        real_rename(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Staging folders and temp files a failed write must not leave behind."""
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".staging-") or p.name.endswith(".tmp")
    ]


@pytest.mark.parametrize(
    "name",
    [ENCODER_FILE, BOOSTER_FILE, MODEL_FILE, CARD_FILE, "v0002"],
    ids=["encoder", "booster", "model-meta", "card", "version-rename"],
)
def test_a_full_disk_while_registering_leaves_production_intact(
    tmp_path: Path, model: DurationModel, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    registry.promote_if_better(v1, m(5.0), champion=None, champion_metrics=None, rescore=scores())
    before = snapshot(tmp_path)
    fill_disk_at(monkeypatch, name)

    with pytest.raises(RegistryError, match="No space left on device") as raised:
        registry.register(model, card("b"))

    assert raised.value.location == tmp_path / "green"
    assert snapshot(tmp_path) == before
    assert not leftovers(tmp_path)
    assert [v.name for v in registry.versions("green")] == ["v0001"]


def test_a_full_disk_while_promoting_leaves_production_intact(
    tmp_path: Path, model: DurationModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    registry.promote_if_better(v1, m(5.0), champion=None, champion_metrics=None, rescore=scores())
    v2 = registry.register(model, card("b"))
    before = snapshot(tmp_path)
    fill_disk_at(monkeypatch, PRODUCTION_FILE)

    with pytest.raises(RegistryError, match="cannot promote v0002.*No space left on device"):
        registry.promote_if_better(
            v2, m(4.0), champion=v1, champion_metrics=m(5.0), rescore=scores()
        )

    assert snapshot(tmp_path) == before
    assert not leftovers(tmp_path)
    production = registry.production("green")
    assert production is not None and production.name == "v0001"


@pytest.mark.parametrize(
    ("rmse", "reason"),
    [
        (4.155, "RMSE 4.155 is better than v0001's 4.188 by 0.033"),
        (4.250, "RMSE 4.250 is worse than v0001's 4.188 by 0.062"),
        (4.188, "RMSE 4.188 equals v0001's 4.188"),
        (4.1882, "RMSE 4.188 is worse than v0001's 4.188 by less than 0.001"),
    ],
)
def test_the_reason_says_better_worse_or_equal_and_by_how_much(rmse: float, reason: str) -> None:
    assert rmse_comparison(rmse, "v0001", 4.188) == reason
