"""The model registry: every trained model kept as a version; one champion in production.

Layout under `TAXIOPS_HOME/models/<taxi type>/`:

    v0001/            model files (see `DurationModel.save`) + card.json
    v0002/
    production.json   which version serves, and the version it replaced

New versions are written to a temporary folder and renamed into place, and
`production.json` is replaced atomically, so a crash or a full disk at any
moment leaves the previous production model intact. A lock file serialises
writers across processes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taxiops import ml
from taxiops.errors import RegistryError
from taxiops.fileio import exclusive_lock, fsync_dir, write_atomically

if TYPE_CHECKING:
    from taxiops.ml import DurationModel, Metrics

CARD_FILE = "card.json"
PRODUCTION_FILE = "production.json"
LOCK_FILE = ".lock"
IDENTITY_FILE = ".registry-id"

Scorer = Callable[["ModelVersion"], "Metrics"]

# What a user who meets a failed registry write should know and do.
_WRITE_FAILED_HINT = (
    "production is unchanged; free space or make the folder writable, "
    "then `taxiops retry` the month file"
)


@dataclass(frozen=True)
class RegistryRef:
    """A registry as a task input: its identity is in cache keys, so results cached against
    a registry that was since deleted or replaced are not served for the new one."""

    root: Path
    identity: str

    @property
    def cache_fingerprint(self) -> str:
        return f"{self.root}:{self.identity}"


@dataclass(frozen=True)
class ModelCard:
    """What a version was trained on and how it scored on its validation month."""

    taxi_type: str
    model_key: str
    validation_month: str
    train_months: list[str]
    data_sha256: dict[str, str]
    params: dict[str, Any]
    code_version: str
    metrics: dict[str, float]
    train_rows: int
    val_rows: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version."""

    taxi_type: str
    number: int
    path: Path
    card: ModelCard

    @property
    def name(self) -> str:
        return f"v{self.number:04d}"

    @property
    def cache_fingerprint(self) -> str:
        return f"{self.taxi_type}/{self.name}/{self.card.model_key}"


@dataclass(frozen=True)
class Promotion:
    """The outcome of a promotion attempt."""

    promoted: bool
    reason: str
    production: str | None


def _same_content(one: ModelCard, other: ModelCard) -> bool:
    """Whether two cards describe the same training judged on the same data: the key, and
    the bytes and month it names, so different contents never share a version."""
    return (
        one.model_key == other.model_key
        and one.data_sha256 == other.data_sha256
        and one.validation_month == other.validation_month
    )


def should_promote(challenger: Metrics, champion: Metrics | None) -> bool:
    """A challenger replaces the champion only when its RMSE is no worse on the same month."""
    return champion is None or challenger.rmse <= champion.rmse


def validation_month_of(version: ModelVersion) -> str:
    """`YYYY-MM` of the month a version was judged on (labels may say "(validation)")."""
    return version.card.validation_month[:7]


def is_backfill(challenger: ModelVersion, champion: ModelVersion) -> bool:
    """Whether the challenger was judged on an older month than the champion was: a model
    for a late-arriving old month must not replace one built for newer data."""
    return validation_month_of(challenger) < validation_month_of(champion)


def judge(
    challenger: ModelVersion,
    metrics: Metrics,
    champion: ModelVersion | None,
    champion_metrics: Metrics | None,
) -> tuple[bool, str]:
    """The promotion rule, and its reason in words: no champion yet, or not a backfill and
    an RMSE no worse than the champion's on the same month (the reason says better, worse
    or equal, and by how much)."""
    if champion is None or champion_metrics is None:
        return True, f"first {challenger.taxi_type} model"
    if is_backfill(challenger, champion):
        return False, (
            f"{validation_month_of(challenger)} is older than {champion.name}'s month "
            f"{validation_month_of(champion)}: a backfill never replaces production"
        )
    return (
        should_promote(metrics, champion_metrics),
        rmse_comparison(metrics.rmse, champion.name, champion_metrics.rmse),
    )


def rmse_comparison(rmse: float, champion_name: str, champion_rmse: float) -> str:
    """The challenger's RMSE against the champion's in words: better, worse or equal, and by
    how much (to three decimals, as both are shown)."""
    delta = rmse - champion_rmse
    if delta == 0:
        return f"RMSE {rmse:.3f} equals {champion_name}'s {champion_rmse:.3f}"
    word = "better" if delta < 0 else "worse"
    gap = f"{abs(delta):.3f}" if abs(delta) >= 0.0005 else "less than 0.001"
    return f"RMSE {rmse:.3f} is {word} than {champion_name}'s {champion_rmse:.3f} by {gap}"


class ModelRegistry:
    """Model versions and the production pointer for each taxi type, on local disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading --------------------------------------------------------------
    def versions(self, taxi_type: str) -> list[ModelVersion]:
        """All versions of a taxi type, oldest first."""
        folder = self.root / taxi_type
        if not folder.is_dir():
            return []
        found = [
            self._read_version(taxi_type, entry)
            for entry in folder.iterdir()
            if entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit()
        ]
        return sorted(found, key=lambda v: v.number)

    def taxi_types(self) -> list[str]:
        """Taxi types that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def production(self, taxi_type: str) -> ModelVersion | None:
        """The version serving in production, or None before the first promotion."""
        record = self._read_production(taxi_type)
        if record is None:
            return None
        return self.version(taxi_type, int(record["version"]))

    def version(self, taxi_type: str, number: int) -> ModelVersion:
        """One version by number."""
        return self._read_version(taxi_type, self.root / taxi_type / f"v{number:04d}")

    def champion_for(self, challenger: ModelVersion) -> ModelVersion | None:
        """The version a challenger must beat: production, or what it replaced if the
        challenger already is production (so re-running the same data compares the same pair)."""
        record = self._read_production(challenger.taxi_type)
        if record is None:
            return None
        if int(record["version"]) != challenger.number:
            return self.version(challenger.taxi_type, int(record["version"]))
        replaced = record.get("replaced")
        return None if replaced is None else self.version(challenger.taxi_type, int(replaced))

    def load_model(self, version: ModelVersion) -> DurationModel:
        """The model of a version, ready to predict."""
        try:
            return ml.DurationModel.load(version.path)
        except (OSError, ValueError) as exc:
            raise RegistryError(version.path, f"cannot load model {version.name}: {exc}") from exc

    # --- writing --------------------------------------------------------------
    def register(self, model: DurationModel, card: ModelCard) -> ModelVersion:
        """Store a model as a new version; the same card again (same `model_key`, made from
        and judged on the same bytes) returns the first version."""
        folder = self.root / card.taxi_type
        with self._locked(card.taxi_type):
            versions = self.versions(card.taxi_type)
            for existing in versions:
                if _same_content(existing.card, card):
                    return existing
            number = max((v.number for v in versions), default=0) + 1
            staging = folder / f".staging-{uuid.uuid4().hex}"
            try:
                staging.mkdir(parents=True)
                model.save(staging)
                _write_json_durably(staging / CARD_FILE, asdict(card))
                os.rename(staging, folder / f"v{number:04d}")
                fsync_dir(folder)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise RegistryError(
                    folder, f"cannot write version v{number:04d}: {exc}; {_WRITE_FAILED_HINT}"
                ) from exc
        return self.version(card.taxi_type, number)

    def promote_if_better(
        self,
        challenger: ModelVersion,
        metrics: Metrics,
        *,
        champion: ModelVersion | None,
        champion_metrics: Metrics | None,
        rescore: Scorer,
    ) -> Promotion:
        """Judge the challenger against production and promote it if it wins, under the
        registry lock. If production changed since `champion` was scored (another run
        promoted meanwhile), the new production model is scored with `rescore` first, so
        a model is never judged against a champion that no longer serves."""
        taxi_type = challenger.taxi_type
        with self._locked(taxi_type):
            current = self._production_number(taxi_type)
            if current == challenger.number:
                return Promotion(
                    True, f"{challenger.name} is already in production", challenger.name
                )
            if current != (None if champion is None else champion.number):
                champion = None if current is None else self.version(taxi_type, current)
                champion_metrics = None if champion is None else rescore(champion)
            promoted, reason = judge(challenger, metrics, champion, champion_metrics)
            if not promoted:
                return Promotion(False, reason, None if champion is None else champion.name)
            record = {
                "version": challenger.number,
                "replaced": None if champion is None else champion.number,
                "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            path = self.root / taxi_type / PRODUCTION_FILE
            try:
                _write_json_durably(path, record)
            except OSError as exc:
                raise RegistryError(
                    path, f"cannot promote {challenger.name}: {exc}; {_WRITE_FAILED_HINT}"
                ) from exc
        return Promotion(True, reason, challenger.name)

    def ref(self) -> RegistryRef:
        """This registry as a task input, creating its folder and identity on first use."""
        path = self.root / IDENTITY_FILE
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                _write_json_durably(path, {"identity": uuid.uuid4().hex})
            identity = str(json.loads(path.read_text())["identity"])
        except (OSError, ValueError, KeyError) as exc:
            raise RegistryError(self.root, f"cannot open the registry: {exc}") from exc
        return RegistryRef(root=self.root, identity=identity)

    # --- internals --------------------------------------------------------------
    @contextmanager
    def _locked(self, taxi_type: str) -> Iterator[None]:
        folder = self.root / taxi_type
        with ExitStack() as held:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive_lock(folder / LOCK_FILE))
            except OSError as exc:
                raise RegistryError(
                    folder, f"cannot open the registry: {exc}; {_WRITE_FAILED_HINT}"
                ) from exc
            yield

    def _production_number(self, taxi_type: str) -> int | None:
        record = self._read_production(taxi_type)
        return None if record is None else int(record["version"])

    def _read_production(self, taxi_type: str) -> dict[str, Any] | None:
        path = self.root / taxi_type / PRODUCTION_FILE
        if not path.exists():
            return None
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(path, f"unreadable production record: {exc}") from exc
        return record

    def _read_version(self, taxi_type: str, path: Path) -> ModelVersion:
        try:
            card = ModelCard(**json.loads((path / CARD_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise RegistryError(path, f"unreadable model card: {exc}") from exc
        return ModelVersion(taxi_type=taxi_type, number=int(path.name[1:]), path=path, card=card)


def _write_json_durably(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON, durably (see `taxiops.fileio.write_atomically`)."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True))
