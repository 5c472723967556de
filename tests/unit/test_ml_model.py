"""Model tests: behaviour (not just a number), persistence, and the leakage guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taxiops.ml import (
    DurationModel,
    Metrics,
    PreparedTrips,
    TrainingParams,
    evaluate,
    load_trips,
    train_model,
    write_synth_month,
)
from taxiops.ml.features import FEATURE_NAMES, ZoneEncoder
from taxiops.ml.model import MANY_ROWS
from taxiops.tripfile import Month, parse_trip_file

FAST = TrainingParams(rounds=40, n_threads=1)


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedTrips, PreparedTrips]:
    folder = tmp_path_factory.mktemp("incoming")
    january, february = (
        load_trips(parse_trip_file(write_synth_month(folder, "green", Month(2021, m), rows=15_000)))
        for m in (1, 2)
    )
    return january, february


@pytest.fixture(scope="module")
def model(months: tuple[PreparedTrips, PreparedTrips]) -> DurationModel:
    return train_model([months[0].frame], FAST)


def test_model_beats_predicting_the_mean(
    model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    train, validation = months
    metrics = evaluate(model, validation.frame)
    actual = validation.frame["duration"].to_numpy(dtype=np.float64)
    mean_rmse = float(np.sqrt(np.mean((actual - train.frame["duration"].mean()) ** 2)))
    assert metrics.rows == len(validation.frame)
    assert metrics.mae <= metrics.rmse
    assert metrics.rmse < 0.6 * mean_rmse


def test_longer_trips_are_predicted_longer(
    model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    frame = months[1].frame.head(2_000)
    short = model.predict(frame.assign(trip_distance=np.float32(1.0)))
    long = model.predict(frame.assign(trip_distance=np.float32(8.0)))
    assert long.mean() > short.mean() + 5
    assert (long >= short).mean() > 0.9


def test_rush_hour_is_predicted_slower_than_night(
    model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    frame = months[1].frame.head(2_000)
    day = frame["pickup_datetime"].dt.normalize()
    weekday = frame[day.dt.day_of_week < 5]
    rush = model.predict(
        weekday.assign(
            pickup_datetime=weekday["pickup_datetime"].dt.normalize()
            + pd.Timedelta(hours=17, minutes=30)
        )
    )
    night = model.predict(
        weekday.assign(
            pickup_datetime=weekday["pickup_datetime"].dt.normalize() + pd.Timedelta(hours=3)
        )
    )
    assert rush.mean() > night.mean()


def test_predictions_are_finite_for_unseen_or_missing_zones(model: DurationModel) -> None:
    frame = pd.DataFrame(
        {
            "PULocationID": pd.array([1, 9_999, None], dtype="Int64"),
            "DOLocationID": [2, 9_998, 5],
            "trip_distance": [2.0, 2.0, 2.0],
            "pickup_datetime": pd.to_datetime(["2021-03-01 12:00"] * 3),
        }
    )
    predicted = model.predict(frame)
    assert predicted.shape == (3,)
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_predict_names_missing_columns(model: DurationModel) -> None:
    with pytest.raises(ValueError, match="trip_distance"):
        model.predict(pd.DataFrame({"PULocationID": [1], "DOLocationID": [2]}))


def test_predict_of_nothing_is_empty(
    model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    assert model.predict(months[1].frame.head(0)).shape == (0,)


def test_save_and_load_give_identical_predictions(
    tmp_path: Path, model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    model.save(tmp_path / "model")
    loaded = DurationModel.load(tmp_path / "model")
    frame = months[1].frame
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    assert loaded.params == model.params
    assert loaded.trained_rows == model.trained_rows
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "booster.ubj",
        "encoder.json",
        "model.json",
    ]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES)


def test_loading_something_else_fails_clearly(tmp_path: Path, model: DurationModel) -> None:
    model.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "format": "pickle/0"}))
    with pytest.raises(ValueError, match="not a readable taxiops model"):
        DurationModel.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        DurationModel.load(tmp_path / "nowhere")


def test_training_is_deterministic_for_a_seed(months: tuple[PreparedTrips, PreparedTrips]) -> None:
    frame = months[0].frame.head(4_000)
    first = train_model([frame], FAST).predict(months[1].frame)
    again = train_model([frame], FAST).predict(months[1].frame)
    np.testing.assert_array_equal(first, again)


def test_training_on_several_months(months: tuple[PreparedTrips, PreparedTrips]) -> None:
    model = train_model([m.frame for m in months], FAST)
    assert model.trained_rows == sum(len(m.frame) for m in months)


def test_training_without_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="no training rows"):
        train_model([], FAST)


def test_params_are_printable_and_validated() -> None:
    params = TrainingParams()
    as_dict = params.as_dict()
    assert as_dict["objective"] == "reg:squarederror"
    assert TrainingParams.from_dict(as_dict) == params
    assert all(isinstance(v, int | float | str) for v in as_dict.values())
    with pytest.raises(ValueError):
        TrainingParams(eta=0)


def test_threads_follow_the_size_of_the_fit_unless_told() -> None:
    auto = TrainingParams()
    assert auto.booster_params(rows=MANY_ROWS - 1)["nthread"] == 1
    assert "nthread" not in auto.booster_params(rows=MANY_ROWS)  # XGBoost's default: all cores
    assert TrainingParams(n_threads=3).booster_params(rows=10 * MANY_ROWS)["nthread"] == 3
    with pytest.raises(ValueError):
        TrainingParams(n_threads=-1)


def test_metrics_are_plain_numbers(
    model: DurationModel, months: tuple[PreparedTrips, PreparedTrips]
) -> None:
    metrics = evaluate(model, months[1].frame)
    assert isinstance(metrics, Metrics)
    assert json.loads(json.dumps(metrics.as_dict())) == metrics.as_dict()
    with pytest.raises(ValueError, match="duration"):
        evaluate(model, months[1].frame.drop(columns=["duration"]))


# --- the zone statistics ------------------------------------------------------------------


def _trips(pu: list[int], do: list[int], minutes: list[float]) -> pd.DataFrame:
    n = len(pu)
    return pd.DataFrame(
        {
            "PULocationID": np.array(pu, dtype=np.int32),
            "DOLocationID": np.array(do, dtype=np.int32),
            "trip_distance": np.full(n, 1.0, dtype=np.float32),
            "pickup_datetime": pd.to_datetime(["2021-01-04 08:00"] * n).as_unit("us"),
            "duration": np.array(minutes, dtype=np.float32),
        }
    )


def test_training_rows_never_see_their_own_duration() -> None:
    """A pair seen once gets the prior for its own row (out of fold), its mean for new rows."""
    frame = _trips([1] * 50 + [7], [2] * 50 + [8], [10.0] * 50 + [55.0])
    encoder, matrix = ZoneEncoder.fit_transform(frame, smoothing=1.0, folds=5, seed=0)
    pair_mean = FEATURE_NAMES.index("pair_mean_minutes")
    pair_trips = FEATURE_NAMES.index("pair_trips")
    assert matrix[-1, pair_trips] == 0
    assert matrix[-1, pair_mean] == pytest.approx(encoder.mean_minutes)
    new = encoder.transform(frame.tail(1))
    assert new[0, pair_trips] == 1
    assert new[0, pair_mean] == pytest.approx((55.0 + encoder.mean_minutes) / 2)


def test_duplicated_trips_cannot_leak_through_their_copies() -> None:
    """Copies of a record share a fold, so a bootstrap-resampled month stays leak-free."""
    once = _trips([1] * 50 + [7], [2] * 50 + [8], [10.0] * 50 + [55.0])
    once["pickup_datetime"] += pd.to_timedelta(np.arange(len(once)), unit="s")
    thrice = pd.concat([once] * 3, ignore_index=True)
    _, matrix = ZoneEncoder.fit_transform(thrice, smoothing=1.0, folds=5, seed=0)
    copies = np.flatnonzero(thrice["PULocationID"].to_numpy() == 7)
    assert matrix[copies, FEATURE_NAMES.index("pair_trips")].tolist() == [0, 0, 0]
    distinct_counts = len(
        set(matrix[thrice["PULocationID"].to_numpy() == 1, FEATURE_NAMES.index("pair_trips")])
    )
    assert distinct_counts > 1  # the other trips still spread over the folds


def test_zone_statistics_are_the_sums_per_zone_and_pair() -> None:
    """Zone IDs a few apart are counted in tables, IDs millions apart sorted: both are the sums."""
    rng = np.random.default_rng(3)
    pu, do = rng.integers(1, 40, 3000).tolist(), rng.integers(1, 40, 3000).tolist()
    near = _trips(pu, do, rng.uniform(1, 60, 3000).tolist())
    far = near.copy()
    far[["PULocationID", "DOLocationID"]] *= 50_000_000 // 40
    for frame in (near, far):
        encoder, _ = ZoneEncoder.fit_transform(frame, smoothing=3.0, folds=5, seed=7)
        pu_ids = frame["PULocationID"].to_numpy(dtype=np.int64)
        frame = frame.assign(pair=(pu_ids << 32) | frame["DOLocationID"].to_numpy(dtype=np.int64))
        for level, column in (("pu", "PULocationID"), ("do", "DOLocationID"), ("pair", "pair")):
            expected = frame.groupby(column)["duration"].agg(["size", "sum"])
            fitted = encoder.levels[level]
            np.testing.assert_array_equal(fitted.keys, expected.index.to_numpy())
            np.testing.assert_array_equal(fitted.trips, expected["size"].to_numpy())
            np.testing.assert_allclose(fitted.minutes, expected["sum"].to_numpy(), rtol=1e-5)
        unseen = frame.head(2).assign(PULocationID=[0, 999_999], DOLocationID=[0, 999_999])
        assert encoder.transform(unseen)[:, FEATURE_NAMES.index("pair_trips")].tolist() == [0, 0]


def test_encoder_survives_json() -> None:
    frame = _trips([1, 1, 3, 4], [2, 2, 3, 9], [5.0, 7.0, 9.0, 30.0])
    encoder, _ = ZoneEncoder.fit_transform(frame, smoothing=2.0, folds=2, seed=1)
    again = ZoneEncoder.from_json(json.loads(json.dumps(encoder.to_json())))
    np.testing.assert_array_equal(again.transform(frame), encoder.transform(frame))


# --- on real months -----------------------------------------------------------------------


@pytest.mark.realdata
def test_real_month_beats_the_course_rmse(shared_data: Path) -> None:
    """The course's method scores RMSE 6.48 on green 2021-01 -> 2021-02 (bench/train_vs_course.py)."""
    train = load_trips(parse_trip_file(shared_data / "green_tripdata_2021-01.parquet"))
    validation = load_trips(parse_trip_file(shared_data / "green_tripdata_2021-02.parquet"))
    metrics = evaluate(train_model([train.frame]), validation.frame)
    assert metrics.rmse < 6.0
