"""What the tools take and what their calls end as: shared by the MCP server and the workflows.

Kept apart from the workflows so that the MCP server, which an AI app starts on demand, imports
neither the steps' clients nor the model's: it only validates arguments and derives call ids.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# -- what the tools take: checked by the MCP server, and again when a worker decodes it --------

City = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=64, pattern=r"^[A-Za-z\u00C0-\u024F][A-Za-z\u00C0-\u024F .'-]*$"
    ),
]
# The invoice id becomes part of the execution id; Resonate ids may not contain ':'.
InvoiceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Text = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=200, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"
    ),
]
type Currency = Literal["EUR", "GBP", "USD"]


class Invoice(BaseModel):
    """What the AI client submits: no approver, who decides is the workers' (`steps.Approver`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    invoice_id: InvoiceId
    vendor: Text
    amount_cents: Annotated[int, Field(ge=1, le=100_000_000)]
    currency: Currency
    description: Text

    @property
    def summary(self) -> str:
        return (
            f"invoice {self.invoice_id} from {self.vendor}: "
            f"{self.amount_cents / 100:,.2f} {self.currency} ({self.description})"
        )


def weather_call_id(city: str, date: str) -> str:
    """The execution id of a city's report for a day: one report per city and day."""
    city = " ".join(unicodedata.normalize("NFC", city).casefold().split())  # Lyon is lyon
    # The slug is for people, and it loses letters ("Malmö" and "Malm" would both be "malm", "Ø"
    # nothing at all), so the id carries a hash of the whole name: two cities never share an id,
    # and every id is ASCII, as call_status takes them.
    ascii_name = unicodedata.normalize("NFKD", city).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")
    digest = hashlib.sha256(city.encode()).hexdigest()[:8]
    return f"weather.{slug}-{digest}.{date}" if slug else f"weather.{digest}.{date}"


def invoice_call_id(invoice_id: str) -> str:
    """The execution id of an invoice's approval: one decision per invoice."""
    return f"invoice.{invoice_id}"


# -- what they end as --------------------------------------------------------------------------


@dataclass(frozen=True)
class WeatherReport:
    city: str
    date: str
    observation_id: str | None = None  # the weather API's observation the report is written from
    report: str | None = None
    refused: str | None = None  # which provider said no, and why


type InvoiceState = Literal["paid", "rejected", "expired", "not-asked", "payment-refused"]


@dataclass(frozen=True)
class InvoiceOutcome:
    invoice_id: str
    state: InvoiceState
    note: str | None = None  # what the approver wrote with the decision
    payment_id: str | None = None
    reason: str | None = None
