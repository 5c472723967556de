"""The registry in a real MLflow store, through real flow runs: what a run records, a model
that loads without taxiops, and verdicts that add up over sequences of runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flows.train import train_duration_model
from mlflow import MlflowClient

from taxiops.app.server import LocalPrefectServer
from taxiops.ml import write_synth_month
from taxiops.ml.schema import PREPARED_COLUMNS
from taxiops.pipeline.report import TrainingSummary
from taxiops.pipeline.tasks import promotion_lock
from taxiops.registry import CHAMPION_ALIAS, EXPERIMENT_NAME, ModelRegistry, model_name
from taxiops.settings import Settings
from taxiops.tripfile import Month

from .conftest import wait_for

# Loads the champion where `import taxiops` fails, predicts a raw month as pandas reads it,
# and scores the rows the data rules keep (the rules written out again, independently).
NO_TAXIOPS_SCRIPT = r"""
import json, sys

class BlockTaxiops:
    def find_spec(self, name, path=None, target=None):
        if name == "taxiops" or name.startswith("taxiops."):
            raise ImportError("taxiops is blocked in this process")

sys.meta_path.insert(0, BlockTaxiops())
try:
    import taxiops
except ImportError:
    pass
else:
    sys.exit("taxiops imported although blocked")

import mlflow, numpy as np, pandas as pd

path, start, end = sys.argv[1:4]
model = mlflow.pyfunc.load_model("models:/taxi-duration-green@champion")
trips = pd.read_parquet(path)
predicted = np.asarray(model.predict(trips), dtype=np.float64)
pickup, dropoff = trips["lpep_pickup_datetime"], trips["lpep_dropoff_datetime"]
minutes = (dropoff - pickup).dt.total_seconds() / 60
keep = (
    pickup.notna() & dropoff.notna()
    & (pickup >= pd.Timestamp(start)) & (pickup < pd.Timestamp(end))
    & trips["PULocationID"].notna() & trips["DOLocationID"].notna()
    & np.isfinite(trips["trip_distance"]) & (trips["trip_distance"] >= 0)
    & (minutes >= 1) & (minutes <= 60)
).to_numpy()
error = predicted[keep] - minutes.to_numpy()[keep]
print(json.dumps({
    "rows": int(keep.sum()),
    "predicted": len(predicted),
    "rmse": float(np.sqrt(np.mean(error ** 2))),
    "taxiops_loaded": any(name.startswith("taxiops") for name in sys.modules),
}))
"""


def run(new_file: Path, train_files: list[Path] | None = None) -> TrainingSummary:
    return train_duration_model(
        new_file=str(new_file),
        train_files=None if train_files is None else [str(p) for p in train_files],
    )


def champion_now(settings: Settings) -> str | None:
    production = ModelRegistry.from_settings(settings).production("green")
    return None if production is None else production.name


@pytest.mark.realdata
def test_champion_loads_and_predicts_a_raw_month_without_taxiops(
    settings: Settings, shared_data: Path, prefect_server: object
) -> None:
    january = shared_data / "green_tripdata_2021-01.parquet"
    february = shared_data / "green_tripdata_2021-02.parquet"
    summary = run(february, train_files=[january])
    assert summary.promoted

    result = subprocess.run(
        [sys.executable, "-c", NO_TAXIOPS_SCRIPT, str(february), "2021-02-01", "2021-03-01"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=settings.home.parent,  # not the checkout: nothing of it on sys.path
        env={**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scored = json.loads(result.stdout.strip().splitlines()[-1])
    assert not scored["taxiops_loaded"]
    assert scored["predicted"] == summary.rows_read  # a prediction for every raw row
    assert scored["rows"] == summary.val_rows
    assert round(scored["rmse"], 3) == round(summary.rmse, 3)


def test_a_run_records_params_metrics_tags_inputs_and_the_model(
    settings: Settings, months: dict[str, Path]
) -> None:
    summary = run(months["2023-02"])

    client = MlflowClient(settings.tracking_uri)
    version = client.get_model_version_by_alias(model_name("green"), CHAMPION_ALIAS)
    assert f"v{version.version}" == summary.model_version
    assert version.run_id is not None and version.run_id == summary.mlflow_run_id
    training = client.get_run(version.run_id)
    experiment = client.get_experiment(training.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME
    assert {"max_depth", "eta", "rounds", "train_months", "validation_month", "data_rules"} <= set(
        training.data.params
    )
    assert training.data.params["train_months"] == "2023-01"
    metrics = training.data.metrics
    assert metrics["rmse"] == pytest.approx(summary.rmse)
    assert metrics["mae"] == pytest.approx(summary.mae)
    assert metrics["train_rows"] == summary.train_rows and metrics["val_rows"] == summary.val_rows
    assert metrics["flow_seconds"] == pytest.approx(summary.seconds)
    assert metrics["pipeline_seconds"] == pytest.approx(summary.pipeline_seconds)
    assert 0 < summary.pipeline_seconds < summary.seconds
    tags = training.data.tags
    assert tags["taxi_type"] == "green" and tags["validation_month"] == "2023-02"
    for month in summary.months:
        assert tags[f"sha256.{month.file}"] == month.sha256
    assert tags["prefect.flow_run_id"] == summary.flow_run_id
    assert tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{summary.flow_run_id}")
    assert training.inputs is not None
    inputs = {(d.dataset.name, d.dataset.digest) for d in training.inputs.dataset_inputs}
    assert inputs == {(m.file, m.sha256[:32]) for m in summary.months}
    # Each dataset's schema names every prepared column; its profile counts all its rows.
    rows = {m.file: m.rows_kept for m in summary.months}
    for found in training.inputs.dataset_inputs:
        schema, profile = found.dataset.schema, found.dataset.profile
        assert schema is not None and profile is not None
        columns = json.loads(schema)["mlflow_colspec"]
        assert {column["name"] for column in columns} == set(PREPARED_COLUMNS)
        assert json.loads(profile)["num_rows"] == rows[found.dataset.name]
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"predicted_vs_actual.svg", "rmse_by_month.svg"} <= artifacts
    assert summary.model_url is not None
    assert summary.model_url.endswith(f"/#/models/taxi-duration-green/versions/{version.version}")


def test_verdicts_add_up_over_a_replaced_month_the_same_bytes_and_a_backfill(
    settings: Settings, months: dict[str, Path]
) -> None:
    """promoted => production is this run's version and its RMSE is no worse than the
    champion's; not promoted => production unchanged; the champion named is the one in
    production as the run began."""
    history: list[tuple[str | None, TrainingSummary, str | None]] = []

    def step(new_file: Path, train_files: list[Path] | None = None) -> TrainingSummary:
        before = champion_now(settings)
        summary = run(new_file, train_files)
        history.append((before, summary, champion_now(settings)))
        return summary

    first = step(months["2023-02"])
    # The case: real-looking new bytes replace the month, and score worse.
    write_synth_month(settings.incoming_dir, "green", Month(2023, 2), rows=6_000, seed=42)
    replaced = step(months["2023-02"])
    again = step(months["2023-02"])  # the same bytes again: the same version
    march = write_synth_month(settings.incoming_dir, "green", Month(2023, 3), rows=6_000, seed=5)
    newer = step(march)
    backfill = step(months["2023-01"], train_files=[months["2023-02"]])

    for before, summary, after in history:
        assert summary.champion_version == before
        if summary.promoted:
            assert after == summary.model_version == summary.production_version
            assert after != before
            assert summary.replaced_version == before
            if summary.champion_rmse is not None:
                assert summary.rmse <= summary.champion_rmse
        else:
            assert after == before == summary.production_version
    assert first.promoted
    assert replaced.model_version != first.model_version  # new bytes, a new version
    assert again.model_version == replaced.model_version
    assert not again.promoted
    if again.model_version == again.champion_version:
        assert "production model itself" in again.promotion_reason
    assert newer.model_version not in {first.model_version, replaced.model_version}
    assert not backfill.promoted and "backfill" in backfill.promotion_reason
    assert_rmse_chart_shows(settings, [summary for _, summary, _ in history])


def assert_rmse_chart_shows(settings: Settings, summaries: list[TrainingSummary]) -> None:
    """The last run's RMSE-by-month chart, as MLflow stores it, has one challenger point per
    version (filled once promoted) and production's RMSE on that version's month."""
    import xml.etree.ElementTree as ET

    last = {s.model_version: s for s in summaries}  # a version's latest run
    ever_promoted = {s.model_version for s in summaries if s.promoted}
    client = MlflowClient(settings.tracking_uri)
    run_id = summaries[-1].mlflow_run_id
    assert run_id is not None
    svg = ET.parse(client.download_artifacts(run_id, "rmse_by_month.svg", str(settings.home)))
    ns = "{http://www.w3.org/2000/svg}"
    points = {e.findtext(f"{ns}title"): e.get("fill") for e in svg.iter(f"{ns}circle")}
    squares = {e.findtext(f"{ns}title") for e in svg.iter(f"{ns}rect") if e.find("*") is not None}
    expected_points: dict[str, str] = {}
    expected_squares: set[str] = set()
    for version, s in last.items():
        verdict = "promoted" if version in ever_promoted else "not promoted"
        title = f"{s.month} {version}: challenger RMSE {s.rmse:.3f} ({verdict})"
        expected_points[title] = "#1f77b4" if version in ever_promoted else "white"
        if s.champion_rmse is not None:
            expected_squares.add(f"{s.month} {version}: production RMSE {s.champion_rmse:.3f}")
    assert len(points) == len(last) > 1 and points == expected_points
    assert squares == expected_squares


def test_the_same_bytes_again_say_the_challenger_is_production_itself(
    settings: Settings, months: dict[str, Path]
) -> None:
    first = run(months["2023-02"])
    again = run(months["2023-02"])

    assert first.promoted and not again.promoted
    assert again.model_version == again.champion_version == first.model_version
    assert again.production_version == first.model_version
    assert again.champion_rmse == pytest.approx(again.rmse)
    assert "production model itself" in again.promotion_reason
    assert champion_now(settings) == first.model_version


def test_two_promotions_at_once_are_decided_one_after_the_other(
    settings: Settings, months: dict[str, Path], prefect_server: LocalPrefectServer
) -> None:
    """Two challengers trained at once, in two processes, against the same champion: the
    lock makes the second decide against the first's outcome, so no two promotions
    replace the same version.

    The test holds the lock until both challengers are registered, which proves both read
    the champion before either could promote: without that, a fast process can finish
    before the other starts, and the two runs are merely sequential."""
    tiny = write_synth_month(settings.home / "tiny", "green", Month(2022, 12), rows=150, seed=7)
    weak = run(months["2023-02"], train_files=[tiny])
    assert weak.promoted
    other = write_synth_month(settings.home / "other", "green", Month(2022, 11), rows=6_000, seed=3)
    taxiops = Path(sys.executable).with_name("taxiops")
    env = {**os.environ, "PREFECT_API_URL": str(prefect_server.api_url)}

    def start(label: str, train_file: Path) -> subprocess.Popen[bytes]:
        # Files, not pipes: nobody reads a pipe while the test waits.
        with (
            (settings.home / f"{label}.out").open("w") as out,
            (settings.home / f"{label}.err").open("w") as err,
        ):
            return subprocess.Popen(
                [str(taxiops), "train", str(months["2023-02"]), "--train", str(train_file)]
                + ["--json"],
                stdout=out,
                stderr=err,
                env=env,
            )

    client = MlflowClient(settings.tracking_uri)
    with promotion_lock("green"):
        # Two processes, as two workers would run them: only the Prefect limit is shared.
        trainers = {
            label: start(label, train_file)
            for label, train_file in (("january", months["2023-01"]), ("november", other))
        }
        wait_for(
            lambda: (
                len(client.search_model_versions(f"name='{model_name('green')}'")) == 3
                or any(t.poll() is not None for t in trainers.values())
            ),
            timeout=240,
            what="both challengers registered while the test holds the promotion lock",
        )
    results: dict[str, TrainingSummary] = {}
    for label, trainer in trainers.items():
        trainer.wait(timeout=240)
        out, err = ((settings.home / f"{label}.{kind}").read_text() for kind in ("out", "err"))
        assert trainer.returncode == 0, err[-3000:]
        printed = json.loads(out.strip().splitlines()[-1])
        results[label] = TrainingSummary.model_validate({**printed, "months": []})
    promoted = [s for s in results.values() if s.promoted]
    assert promoted  # both beat the weak champion
    for summary in results.values():
        assert summary.champion_version == weak.model_version
    if len(promoted) == 2:  # the second judged against the first, not the champion it began with
        assert any("production changed during this run" in s.promotion_reason for s in promoted)
    replaced = [s.replaced_version for s in promoted]
    assert len(set(replaced)) == len(replaced)  # never two decisions replacing the same one
    final = champion_now(settings)
    assert final in {s.model_version for s in promoted}
    records = [
        json.loads(v.tags["taxiops.promotion"])
        for v in client.search_model_versions(f"name='{model_name('green')}'")
        if "taxiops.promotion" in v.tags
    ]
    assert sorted(r["replaced"] is None for r in records).count(True) == 1  # the first only
