"""Email triage: sort one inbound email by category and urgency, with a one-line summary.

Run it on a single email:

    smallops run email-triage --json '{"sender": "dana@example.com", "subject": "Card declined",
        "body": "Our renewal failed this morning, can you help?"}'

The eval set is evals/email_triage.jsonl. Every output goes to a human reviewer for now.
"""

from typing import Literal

from pydantic import BaseModel, Field

from smallops import Workflow


class Triage(BaseModel):
    """Where one inbound email should go and how soon someone must look at it."""

    category: Literal["billing", "support", "sales", "spam", "other"] = Field(
        description=(
            "billing: our invoices, payments, refunds, tax/VAT, cancellations. "
            "support: the product not working or how to use it. "
            "sales: someone who may buy or buy more. "
            "spam: unsolicited marketing, scams, phishing. "
            "other: genuine mail that fits none of these."
        )
    )
    urgency: Literal["low", "normal", "high"] = Field(
        description=(
            "high: customers blocked or data wrong right now, security or money at risk. "
            "normal: needs a reply within a working day. "
            "low: can wait, or needs no reply. Spam is always low."
        )
    )
    summary: str = Field(
        max_length=280,
        description="One or two plain sentences for the person picking this up: who, what, ask.",
    )


email_triage = Workflow(
    "email-triage",
    model="openai:gpt-4o-mini-2024-07-18",
    prompt="email_triage.prompt",
    output=Triage,
    temperature=0,
    max_tokens=400,
    review="all",
    fallback="review",
    content="full",  # "redacted" masks emails, phone and card numbers before they are logged
    retention_days=365,  # `smallops prune` (e.g. nightly) then empties older runs' content
    owner="ops@example.com",
    description="Sort inbound support email by category and urgency.",
)
