"""taxiops: keep a NYC taxi trip-duration model fresh without anyone watching it.

The story of a file, one module each:
watcher -> events -> deployment (prefect.yaml) -> flows/ -> tasks -> ml -> registry -> notify.
"""

from __future__ import annotations

__version__ = "0.1.0"
