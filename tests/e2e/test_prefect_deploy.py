"""`prefect deploy --all` from prefect.yaml onto a process work pool, and a worker running it.

Uses a server of its own: deploying replaces the session server's deployments
of the same names, which the watcher tests rely on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxiops import names
from taxiops.app.server import LocalPrefectServer, free_port
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import load_settings
from taxiops.tripfile import Month
from tests.stores import seed_prefect_store

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]


def test_prefect_deploy_all_and_a_process_worker_train_a_month(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    for seed, month in enumerate(["2023-01", "2023-02"]):
        write_synth_month(incoming, "green", Month.parse(month), rows=3_000, seed=seed)
    seed_prefect_store(tmp_path / "server")
    with LocalPrefectServer(state_dir=tmp_path / "server", port=free_port()) as server:
        env = {
            **os.environ,
            "PREFECT_API_URL": server.api_url,
            "TAXIOPS_HOME": str(tmp_path / "home"),
            "TAXIOPS_INCOMING_DIR": str(incoming),
        }

        def prefect(*args: str, timeout: float = 120) -> str:
            result = subprocess.run(
                [*PREFECT, *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            return result.stdout

        prefect("work-pool", "create", names.WORK_POOL, "--type", "process")
        prefect("deploy", "--all")
        listed = prefect("deployment", "ls")
        assert names.TRAIN_FLOW in listed and names.RETRAIN_FLOW in listed

        ran = prefect(
            "deployment",
            "run",
            names.TRAIN_DEPLOYMENT_FULL,
            "--param",
            f"new_file={incoming / 'green_tripdata_2023-02.parquet'}",
        )
        run_id = next(line.split(":", 1)[1].strip() for line in ran.splitlines() if "UUID:" in line)
        prefect("worker", "start", "--pool", names.WORK_POOL, "--run-once", timeout=240)

        with (
            temporary_settings(updates={PREFECT_API_URL: server.api_url}),
            get_client(sync_client=True) as client,
        ):
            run = client.read_flow_run(UUID(run_id))
        assert run.state is not None and run.state.is_completed(), run.state
        home = tmp_path / "home"
        champion = ModelRegistry.from_settings(load_settings(home=home)).production("green")
        assert champion is not None and champion.run_id
