"""Imported by the fork server of `taxiops.pipeline.warm_start`, and nowhere else: imports
what a run needs. A module that fails is skipped (the run that needs it imports it again
and fails where it belongs), so a broken optional import cannot take the server down."""

from __future__ import annotations

import importlib
import logging

from taxiops.pipeline.warm_start import WARM_MODULES

for _name in WARM_MODULES:
    try:
        importlib.import_module(_name)
    except Exception as exc:
        logging.getLogger(__name__).debug("preloading %s failed: %s", _name, exc)
