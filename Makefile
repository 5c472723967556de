# The two commands: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv from PATH, else the one pip puts into the venv (uv is also a dev dependency).
UV := $(or $(shell command -v uv 2>/dev/null),$(BIN)/uv)

.PHONY: demo test lowest lint bench install clean

demo: $(STAMP)
	$(BIN)/taxiops demo

# Two workers, one test file each at a time (module fixtures such as a served `taxiops up`
# stay in one worker); each worker starts its own Prefect server. Debian packages that
# tests drive (chromium, postgresql) are installed first where this runs as root.
DEBIAN_TEST_PACKAGES := chromium postgresql

test: $(STAMP)
	.ci/debian-packages.sh $(DEBIAN_TEST_PACKAGES)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The unit tests against the lowest versions pyproject.toml allows (own venv: .venv-lowest).
lowest: $(STAMP)
	UV=$(UV) .ci/lowest.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests flows bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/train_vs_course.py
	$(BIN)/python bench/cache_rerun.py
	$(BIN)/python bench/peak_memory.py
	$(BIN)/python bench/watch_latency.py
	$(BIN)/python bench/burst.py
	$(BIN)/python bench/soak.py --outage 60

install: $(STAMP)

# Bytecode is compiled at install (pip does, uv does not by default): where
# PYTHONDONTWRITEBYTECODE is set, as on CI, every process would compile Prefect anew
# (import prefect: 2.5 s instead of 1.5 s).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("taxiops needs Python 3.11+") if sys.version_info < (3, 11) else None'
	@if [ ! -x "$(UV)" ]; then \
	  echo "uv is not on PATH: installing it into $(VENV) with pip"; \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet uv; \
	elif [ ! -x $(BIN)/python ]; then \
	  $(UV) venv --quiet --python $(PYTHON) $(VENV); \
	fi
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .venv-lowest .taxiops .pytest_cache .mypy_cache .ruff_cache
