"""The model registry on real files: versions, idempotency, promotion, atomicity."""

from __future__ import annotations

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
from taxiops.registry import ModelCard, ModelRegistry, should_promote
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


def test_promotion_is_compare_and_swap(tmp_path: Path, model: DurationModel) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    v2 = registry.register(model, card("b"))
    v3 = registry.register(model, card("c"))

    assert registry.promote(v1, expected=None).promoted
    stale = registry.promote(v2, expected=None)  # judged against "no champion", but v1 is in
    assert not stale.promoted and "changed" in stale.reason
    assert registry.promote(v3, expected=v1).promoted
    production = registry.production("green")
    assert production is not None and production.name == "v0003"


def test_champion_for_a_challenger_already_in_production_is_what_it_replaced(
    tmp_path: Path, model: DurationModel
) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = registry.register(model, card("a"))
    v2 = registry.register(model, card("b"))
    registry.promote(v1, expected=None)

    assert registry.champion_for(v2) == v1
    registry.promote(v2, expected=v1)
    assert registry.champion_for(v2) == v1  # a re-run compares the same pair again
    assert registry.champion_for(v1) == v2


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
    registry.promote(v1, expected=None)

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
