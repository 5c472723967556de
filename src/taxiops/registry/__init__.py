"""The model registry in MLflow: a run and a version per challenger, the champion alias
on production, and the promotion rule."""

from __future__ import annotations

from taxiops.registry._rules import (
    is_backfill,
    judge,
    rmse_comparison,
    should_promote,
    validation_month_of,
)
from taxiops.registry._store import (
    CHAMPION_ALIAS,
    EXPERIMENT_NAME,
    Lock,
    ModelCard,
    ModelRegistry,
    ModelVersion,
    Promotion,
    RegistryRef,
    ScoredMonth,
    TrainingDataset,
    TrainingRecord,
    check_model_requirements,
    model_name,
    sign_in,
)

__all__ = [
    "CHAMPION_ALIAS",
    "EXPERIMENT_NAME",
    "Lock",
    "ModelCard",
    "ModelRegistry",
    "ModelVersion",
    "Promotion",
    "RegistryRef",
    "ScoredMonth",
    "TrainingDataset",
    "TrainingRecord",
    "check_model_requirements",
    "is_backfill",
    "judge",
    "model_name",
    "rmse_comparison",
    "should_promote",
    "sign_in",
    "validation_month_of",
]
