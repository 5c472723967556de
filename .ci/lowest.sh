#!/usr/bin/env bash
# The lowest versions pyproject.toml allows for its direct dependencies (uv's
# --resolution lowest-direct), in their own venv, running the tests that need no Prefect
# server: a lower bound that is too low fails here. Not tests/test_quality.py: lint and type
# verdicts follow the stubs of indirect dependencies (numpy), which lowest-direct leaves free.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
VENV=.venv-lowest
rm -rf "$VENV"
"$UV" venv --quiet --python "${PYTHON:-python3}" "$VENV"
"$UV" pip install --quiet --python "$VENV/bin/python" --resolution lowest-direct -e '.[dev]'
printf "lowest versions: "
"$UV" pip freeze --python "$VENV/bin/python" --exclude-editable \
  | grep -iE '^(prefect|watchdog|slack-sdk|slack_sdk|apprise|pandas|pyarrow|xgboost-cpu|typer|pydantic|pydantic-settings|pyyaml|httpx|mlflow|scikit-learn|pytest|pytest-asyncio)==' \
  | tr '\n' ' '
echo
"$VENV/bin/python" -m pytest -q -n 2 -p no:cacheprovider \
  tests/unit \
  tests/intake/test_watcher_units.py tests/intake/test_watcher_ledger.py \
  tests/notify/test_blocks.py tests/notify/test_channels.py tests/notify/test_inbox.py \
  tests/notify/test_messages.py tests/notify/test_templates.py
