"""Lead qualification: rate one inbound lead for Acme Ops and suggest the next step.

Run it on a single lead:

    smallops run lead-qualification --json '{"company": "Brightleaf Dental", "contact_name":
        "Sam Ortiz", "contact_title": "Controller", "source": "website form",
        "message": "We are 60 people and want to stop keying invoices by hand. Demo?"}'

The eval set is evals/lead_qualification.jsonl. Every output goes to a human reviewer for now.
"""

from typing import Literal

from pydantic import BaseModel, Field

from smallops import Workflow


class Lead(BaseModel):
    """How well one inbound lead fits Acme Ops, what they want, and what sales should do next."""

    fit: Literal["hot", "warm", "cold", "disqualified"] = Field(
        description=(
            "hot: states 20-500 people, a finance or leadership decision maker, buying intent. "
            "warm: plausible fit with something missing or uncertain. "
            "cold: poor fit or no real need. "
            "disqualified: not a prospect at all (job seeker, vendor, existing customer, spam)."
        )
    )
    company_size: Literal["1-10", "11-50", "51-200", "201-1000", "1000+", "unknown"] = Field(
        description="Headcount bucket, only from what the lead says; otherwise unknown.",
    )
    intent: Literal["demo_request", "pricing", "partnership", "support", "job_seeker", "other"] = (
        Field(description="The main thing the lead is asking for.")
    )
    next_step: str = Field(
        max_length=200,
        description="One concrete action for our team, e.g. 'Book a 30-minute demo this week'.",
    )
    reasons: list[str] = Field(
        max_length=3,
        description="Up to three short reasons for the fit rating, each a few words.",
    )


lead_qualification = Workflow(
    "lead-qualification",
    model="openai:gpt-4o-mini-2024-07-18",
    prompt="lead_qualification.prompt",
    output=Lead,
    temperature=0,
    max_tokens=400,
    review="all",
    fallback="review",
    owner="sales@example.com",
    description="Rate inbound leads for fit and intent and suggest a next step.",
)
