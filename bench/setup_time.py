"""Fresh clone -> Prefect UI: seconds from `make demo` until the UI answers HTTP 200.

Each run clones `--rev` of `--repo` into a temp folder, gives pip and uv empty caches
(PIP_CACHE_DIR, UV_CACHE_DIR in the temp folder), runs `make demo` there with its state,
incoming folder and a free server port in the temp folder, polls the UI, then Ctrl-Cs the
demo's process group (SIGKILL after 30 s) and deletes the folder.

    .venv/bin/python bench/setup_time.py --rev 162d56a --rev HEAD --runs 3 [--no-uv-on-path]

Several `--rev`s run interleaved (one run of each, then the next round), so a noisy
moment of the machine falls on all of them; the last line is the ratio of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_SECONDS = 900.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the demo's process group; SIGKILL it if it is still there after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def without_uv(path: str) -> str:
    """PATH without the folders holding a `uv` executable."""
    return os.pathsep.join(d for d in path.split(os.pathsep) if not (Path(d) / "uv").exists())


def one_run(repo: Path, commit: str, *, hide_uv: bool) -> tuple[float, float]:
    """Seconds from `make demo` to the venv being installed (make starts `taxiops demo`) and
    to the UI's first HTTP 200, in a fresh clone of `commit`."""
    root = Path(tempfile.mkdtemp(prefix="taxiops-setup-"))
    try:
        clone = root / "taxiops"
        subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TAXIOPS_", "SLACK_", "PREFECT_", "VIRTUAL_ENV", "UV_"))
        }
        env.update(
            PIP_CACHE_DIR=str(root / "pip-cache"),
            UV_CACHE_DIR=str(root / "uv-cache"),
            TAXIOPS_HOME=str(root / "home"),
            TAXIOPS_INCOMING_DIR=str(root / "incoming"),
            TAXIOPS_SERVER_PORT=str(port),
            PREFECT_HOME=str(root / "prefect-home"),
            DO_NOT_TRACK="1",
        )
        if hide_uv:
            env["PATH"] = without_uv(env.get("PATH", ""))
        url = f"http://127.0.0.1:{port}/"
        log_path = root / "demo.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["make", "demo"],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        installed = None
        try:
            while not answers_200(url):
                if installed is None and b"bin/taxiops demo" in log_path.read_bytes():
                    installed = time.monotonic() - started
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    got = "never" if installed is None else f"after {installed:.1f} s"
                    sys.exit(
                        f"make demo exited with {process.returncode} (venv installed {got}):\n{tail}"
                    )
                if time.monotonic() - started > TIMEOUT_SECONDS:
                    sys.exit(f"no HTTP 200 from {url} after {TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.2)
            ready = time.monotonic() - started
            return (ready if installed is None else installed), ready
        finally:
            stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="default: this checkout",
    )
    parser.add_argument(
        "--rev", action="append", help="a revision of --repo; repeat to compare (default HEAD)"
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--no-uv-on-path", action="store_true", help="hide uv from PATH (make must bring it in)"
    )
    args = parser.parse_args()
    revs: list[str] = args.rev or ["HEAD"]
    commits = {
        rev: subprocess.run(
            ["git", "-C", str(args.repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for rev in revs
    }
    installs: dict[str, list[float]] = {rev: [] for rev in revs}
    seconds: dict[str, list[float]] = {rev: [] for rev in revs}
    for number in range(1, args.runs + 1):
        for rev in revs:
            installed, ready = one_run(args.repo, commits[rev], hide_uv=args.no_uv_on_path)
            installs[rev].append(installed)
            seconds[rev].append(ready)
            print(
                f"run {number} {rev}: venv installed {installed:.1f} s, UI {ready:.1f} s",
                flush=True,
            )
    uv = "hidden" if args.no_uv_on_path else ("on PATH" if shutil.which("uv") else "absent")
    for rev in revs:
        print(
            f"setup_time rev={rev} ({commits[rev][:7]}), uv {uv}: make demo -> UI HTTP 200 "
            f"median {statistics.median(seconds[rev]):.1f} s, worst {max(seconds[rev]):.1f} s "
            f"(venv installed: median {statistics.median(installs[rev]):.1f} s, "
            f"worst {max(installs[rev]):.1f} s), runs {len(seconds[rev])}"
        )
    if len(revs) > 1:
        first, last = revs[0], revs[-1]
        ratio = statistics.median(seconds[first]) / statistics.median(seconds[last])
        print(f"setup_time ratio {first} / {last} (median to UI): {ratio:.2f}x")


if __name__ == "__main__":
    main()
