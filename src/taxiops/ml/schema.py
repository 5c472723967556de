"""Column names and types of TLC month files, per taxi type, in one place.

Two layers:

* `TripColumns`: the five columns the model reads and the arrow type kinds each
  accepts (what `load_trips` checks before it reads any data);
* `tlc_file_schema`: every column of a real TLC file with its type, in file order
  (what `synth` writes, so synthetic months look like real ones).

The prepared frame the model sees has fixed, taxi-type-independent names: see
`PREPARED_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

# The prepared frame's names come from `features`, which a registered model carries.
from taxiops.ml.features import DO_LOCATION as DO_LOCATION
from taxiops.ml.features import DURATION as DURATION
from taxiops.ml.features import PICKUP as PICKUP
from taxiops.ml.features import PU_LOCATION as PU_LOCATION
from taxiops.ml.features import TRIP_DISTANCE as TRIP_DISTANCE
from taxiops.tripfile import TaxiType

# --- the prepared frame ----------------------------------------------------------

#: Columns of `PreparedTrips.frame`, in order, with their pandas dtypes.
PREPARED_COLUMNS: dict[str, str] = {
    PU_LOCATION: "int32",
    DO_LOCATION: "int32",
    TRIP_DISTANCE: "float32",
    PICKUP: "datetime64[us]",
    DURATION: "float32",
}

#: Columns `DurationModel.predict` needs (everything but the target).
FEATURE_INPUT_COLUMNS: tuple[str, ...] = (PU_LOCATION, DO_LOCATION, TRIP_DISTANCE, PICKUP)


class TypeKind(StrEnum):
    """Families of arrow types a column may be stored as."""

    TIMESTAMP = "timestamp"
    INTEGER = "integer"
    FLOAT = "float"
    NULL = "null"  # an all-null column, as TLC writes empty columns

    def accepts(self, arrow_type: pa.DataType) -> bool:
        """Whether `arrow_type` belongs to this family."""
        if self is TypeKind.TIMESTAMP:
            return bool(pa.types.is_timestamp(arrow_type))
        if self is TypeKind.INTEGER:
            return bool(pa.types.is_integer(arrow_type))
        if self is TypeKind.FLOAT:
            return bool(pa.types.is_floating(arrow_type))
        return bool(pa.types.is_null(arrow_type))


_LOCATION_KINDS = (TypeKind.INTEGER, TypeKind.FLOAT, TypeKind.NULL)
_DISTANCE_KINDS = (TypeKind.FLOAT, TypeKind.INTEGER, TypeKind.NULL)


@dataclass(frozen=True)
class TripColumns:
    """The columns of one taxi type's file that the model reads."""

    taxi_type: TaxiType
    pickup: str
    dropoff: str

    @property
    def accepted_kinds(self) -> dict[str, tuple[TypeKind, ...]]:
        """Column name -> type families accepted, in reading order.

        Location IDs may be stored as integer-valued floats (some TLC years do);
        all-null columns are accepted and their rows dropped as missing values.
        """
        return {
            self.pickup: (TypeKind.TIMESTAMP,),
            self.dropoff: (TypeKind.TIMESTAMP,),
            PU_LOCATION: _LOCATION_KINDS,
            DO_LOCATION: _LOCATION_KINDS,
            TRIP_DISTANCE: _DISTANCE_KINDS,
        }

    @property
    def names(self) -> tuple[str, ...]:
        """The column names read from the file."""
        return tuple(self.accepted_kinds)


TRIP_COLUMNS: dict[TaxiType, TripColumns] = {
    "green": TripColumns("green", pickup="lpep_pickup_datetime", dropoff="lpep_dropoff_datetime"),
    "yellow": TripColumns("yellow", pickup="tpep_pickup_datetime", dropoff="tpep_dropoff_datetime"),
}


def trip_columns(taxi_type: TaxiType) -> TripColumns:
    """The columns the model reads from a `taxi_type` file."""
    return TRIP_COLUMNS[taxi_type]


def tlc_file_schema(taxi_type: TaxiType) -> pa.Schema:
    """Every column of a TLC month file (2021-2023 layout), in file order, with its arrow type.

    Green matches the TLC green files of 2021 to 2023-01 (later files narrow
    some integers to int32, which `load_trips` accepts as well). Yellow follows
    the TLC yellow layout of the same years (no `ehail_fee`/`trip_type`, an
    `airport_fee`, and a different column order).
    """
    ts = pa.timestamp("us")
    if taxi_type == "green":
        return pa.schema(
            [
                ("VendorID", pa.int64()),
                ("lpep_pickup_datetime", ts),
                ("lpep_dropoff_datetime", ts),
                ("store_and_fwd_flag", pa.string()),
                ("RatecodeID", pa.float64()),
                (PU_LOCATION, pa.int64()),
                (DO_LOCATION, pa.int64()),
                ("passenger_count", pa.float64()),
                (TRIP_DISTANCE, pa.float64()),
                ("fare_amount", pa.float64()),
                ("extra", pa.float64()),
                ("mta_tax", pa.float64()),
                ("tip_amount", pa.float64()),
                ("tolls_amount", pa.float64()),
                ("ehail_fee", pa.null()),
                ("improvement_surcharge", pa.float64()),
                ("total_amount", pa.float64()),
                ("payment_type", pa.float64()),
                ("trip_type", pa.float64()),
                ("congestion_surcharge", pa.float64()),
            ]
        )
    return pa.schema(
        [
            ("VendorID", pa.int64()),
            ("tpep_pickup_datetime", ts),
            ("tpep_dropoff_datetime", ts),
            ("passenger_count", pa.float64()),
            (TRIP_DISTANCE, pa.float64()),
            ("RatecodeID", pa.float64()),
            ("store_and_fwd_flag", pa.string()),
            (PU_LOCATION, pa.int64()),
            (DO_LOCATION, pa.int64()),
            ("payment_type", pa.int64()),
            ("fare_amount", pa.float64()),
            ("extra", pa.float64()),
            ("mta_tax", pa.float64()),
            ("tip_amount", pa.float64()),
            ("tolls_amount", pa.float64()),
            ("improvement_surcharge", pa.float64()),
            ("total_amount", pa.float64()),
            ("congestion_surcharge", pa.float64()),
            ("airport_fee", pa.float64()),
        ]
    )
