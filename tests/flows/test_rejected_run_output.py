"""A deployment run that ends Rejected says so without Prefect's engine traceback (issue 9):
run the way the runner runs it, `python -m prefect.flow_engine <entrypoint>`, in a child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.train import train_duration_model
from prefect.client.orchestration import get_client

from taxiops import names
from taxiops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_a_rejected_deployment_run_prints_no_engine_traceback(
    settings: Settings, prefect_server: Any
) -> None:
    bad = settings.incoming_dir / "green_tripdata_2023-03.parquet"
    bad.write_bytes(b"PAR1 not parquet at all PAR1")
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(train_duration_model, parameters={"new_file": str(bad)})

    done = subprocess.run(
        [sys.executable, "-m", "prefect.flow_engine", "flows/train.py:train_duration_model"],
        cwd=ROOT,
        env={**os.environ, "PREFECT__FLOW_RUN_ID": str(run.id)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    output = done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.name == names.REJECTED_STATE, output
    assert done.returncode == 0, output
    assert "unreadable-parquet" in output
    assert "unexpected exception" not in output and "Traceback" not in output, output
