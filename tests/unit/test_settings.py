"""Settings: every field documented in .env.example, read from the environment and .env."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices

from taxiops.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def env_names(name: str) -> set[str]:
    field = Settings.model_fields[name]
    if isinstance(field.validation_alias, AliasChoices):
        return {str(choice) for choice in field.validation_alias.choices}
    return {f"TAXIOPS_{name.upper()}"}


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    missing = [name for name in Settings.model_fields if not env_names(name) & documented]
    assert missing == []


def test_env_example_holds_placeholders_only() -> None:
    text = ENV_EXAMPLE.read_text()
    assert re.search(r"^SLACK_WEBHOOK_URL=", text, re.MULTILINE) is None  # commented out
    assert "XXXXXXXX" in text and "xoxb-your-bot-token" in text


def test_settings_read_the_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "TAXIOPS_TRAIN_MONTHS=3\nSLACK_WEBHOOK_URL=http://127.0.0.1:9/hook\n"
    )
    monkeypatch.setenv("TAXIOPS_RETRAIN_TAXI_TYPES", "yellow")

    settings = Settings()

    assert settings.train_months == 3
    assert settings.retrain_taxi_types == ["yellow"]
    assert settings.slack_webhook_url is not None
    assert "127.0.0.1:9" not in repr(settings) and "127.0.0.1:9" not in str(settings.model_dump())


def test_bad_values_are_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAXIOPS_TRAIN_MONTHS", "0")
    with pytest.raises(ValueError, match="train_months"):
        Settings()


def test_quarantine_is_beside_the_incoming_folder_even_when_it_is_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(incoming_dir=Path("."))
    assert settings.quarantine_dir == tmp_path.resolve().parent / "quarantine"
    assert not settings.quarantine_dir.is_relative_to(tmp_path.resolve())
