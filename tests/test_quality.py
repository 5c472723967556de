"""House rules the suite enforces: ruff lint + format, and strict mypy (pydantic plugin) on
the package, the flows and the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_passes() -> None:
    result = _run(str(BIN / "ruff"), "check", "src", "tests", "flows", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "format", "--check", "src", "tests", "flows", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_package_flows_and_tests() -> None:
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_errors_module_lists_every_taxiops_error() -> None:
    """`taxiops.errors` claims to list every error taxiops raises on purpose: keep it true."""
    import importlib
    import pkgutil

    import taxiops
    from taxiops import errors

    for module in pkgutil.walk_packages(taxiops.__path__, "taxiops."):
        importlib.import_module(module.name)

    def subclasses(cls: type) -> set[type]:
        found: set[type] = set(cls.__subclasses__())
        return found.union(*(subclasses(sub) for sub in found))

    ours = {c for c in subclasses(errors.TaxiopsError) if c.__module__.startswith("taxiops.")}
    missing = sorted(c.__name__ for c in ours if c.__name__ not in (errors.__doc__ or ""))
    assert not missing, f"errors.py does not list {missing}"
    elsewhere = sorted(c.__name__ for c in ours if c.__module__ != "taxiops.errors")
    assert elsewhere == ["FetchInterruptedError", "NotifierError"], elsewhere
