"""Messages and records of the data-delivery ETL."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

ALLOWED_URI_SCHEMES = ("file://", "s3://", "gs://", "abfs://", "az://")
CSV_HEADER = ("order_id", "customer_id", "amount", "currency", "ordered_at")

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")]


class DeliveryNotice(BaseModel):
    """"Data ready": a producer delivered a file and announces it. Example::

        {"delivery_id": "orders-2026-11-24-001", "uri": "s3://landing/orders/2026-11-24-001.csv",
         "sha256": "<64 hex>", "row_count": 1200, "producer": "shop-export",
         "delivered_at": "2026-11-24T08:00:00Z", "dataset": "orders"}
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    delivery_id: Identifier
    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    row_count: Annotated[int, Field(ge=0, le=5_000_000)]
    producer: Identifier
    delivered_at: AwareDatetime
    dataset: Literal["orders"] = "orders"

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if not uri.startswith(ALLOWED_URI_SCHEMES):
            raise ValueError(f"URI must start with one of {', '.join(ALLOWED_URI_SCHEMES)}")
        return uri


class OrderRow(BaseModel):
    """One CSV row of a delivered orders file (strings in, typed values out)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: Identifier
    customer_id: Identifier
    amount: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    ordered_at: AwareDatetime

    @field_validator("ordered_at")
    @classmethod
    def _representable_in_utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is outside the range of representable UTC times") from None

    def to_record(self, delivery_id: str, sha256: str) -> dict[str, object]:
        """The row as loaded: integer cents, upper-case ISO currency, UTC timestamp, lineage columns."""
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "amount_cents": int(self.amount * 100),
            "currency": self.currency.upper(),
            "ordered_at": self.ordered_at.astimezone(timezone.utc),
            "delivery_id": delivery_id,
            "source_sha256": sha256,
        }
