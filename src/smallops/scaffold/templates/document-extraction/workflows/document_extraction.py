"""Document extraction: pull the header fields out of one invoice's text.

Run it on the plain text of an invoice (as extracted from a PDF):

    smallops run document-extraction --json '{"document": "Invoice INV-1042 ... Total $90.00"}'

or, for a whole text file, let jq build the JSON:

    smallops run document-extraction --json "$(jq -n --rawfile document inv.txt '{$document}')"

The eval set is evals/document_extraction.jsonl. Every output goes to a human reviewer for now.
"""

from typing import Literal

from pydantic import BaseModel, Field

from smallops import Workflow
from smallops.evals.scorers import tolerance

ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


class Invoice(BaseModel):
    """The header fields of one invoice or credit note, ready to enter into accounts payable."""

    vendor: str = Field(description="The company that issued the document, as printed.")
    invoice_number: str = Field(description="The invoice or credit note number, as printed.")
    invoice_date: str = Field(pattern=ISO_DATE, description="Issue date as YYYY-MM-DD.")
    due_date: str | None = Field(
        pattern=ISO_DATE,
        description="Payment due date as YYYY-MM-DD; null when the document gives none.",
    )
    currency: Literal["USD", "EUR", "GBP", "CAD", "AUD", "other"] = Field(
        description="Currency of the amounts; other for any currency not listed.",
    )
    total: float = Field(
        description="Grand total including tax, as a plain number; negative for a credit note.",
    )
    tax: float | None = Field(
        description="Total tax (VAT, GST, sales tax); null when no tax is shown.",
    )
    line_item_count: int = Field(
        ge=0,
        description="Rows in the line-item table; subtotal, tax and total rows do not count.",
    )


document_extraction = Workflow(
    "document-extraction",
    model="anthropic:claude-sonnet-4-6",
    prompt="document_extraction.prompt",
    output=Invoice,
    temperature=0,
    max_tokens=600,
    review="all",
    fallback="review",
    owner="finance@example.com",
    description="Extract vendor, number, dates, currency and totals from invoice text.",
    checks={"total": tolerance(0.01), "tax": tolerance(0.01)},  # how `smallops eval` compares
)
