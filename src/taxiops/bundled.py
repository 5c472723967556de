"""Where `flows/` and `automations/` are: inside the installed package, or in the checkout.

Both folders live at the top of the repository (`prefect.yaml` points at `flows/`), and the
wheel and sdist carry copies inside the package (`pyproject.toml`, `force-include`). An
installed taxiops finds them there; an editable install finds them in its checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


def bundled_root() -> Path:
    """The folder holding `flows/` and `automations/`: the installed package when it carries
    them, else the checkout this module was loaded from."""
    package = files("taxiops")
    if isinstance(package, Path) and (package / "flows").is_dir():
        return package.resolve()
    return _CHECKOUT_ROOT
