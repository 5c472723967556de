"""Imported by the fork server of `taxiops.pipeline.warm_start`, and nowhere else: imports
what a run needs, and runs MLflow's check of a model's requirements once. A module (or the
check) that fails is skipped (the run that needs it fails where it belongs), so a broken
optional import cannot take the server down."""

from __future__ import annotations

import importlib
import logging

from taxiops.pipeline.warm_start import WARM_MODULES

for _name in WARM_MODULES:
    try:
        importlib.import_module(_name)
    except Exception as exc:
        logging.getLogger(__name__).debug("preloading %s failed: %s", _name, exc)

try:
    from taxiops.registry import check_model_requirements

    check_model_requirements()  # what it learns about the installed packages is inherited
except Exception as exc:
    logging.getLogger(__name__).debug("checking the model requirements failed: %s", exc)
