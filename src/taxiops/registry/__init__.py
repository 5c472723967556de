"""The model registry: every trained model kept as a version; one champion in production."""

from __future__ import annotations

from taxiops.registry._store import (
    ModelCard,
    ModelRegistry,
    ModelVersion,
    Promotion,
    RegistryRef,
    is_backfill,
    judge,
    should_promote,
    validation_month_of,
)

__all__ = [
    "ModelCard",
    "ModelRegistry",
    "ModelVersion",
    "Promotion",
    "RegistryRef",
    "is_backfill",
    "judge",
    "should_promote",
    "validation_month_of",
]
