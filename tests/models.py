"""Output models the tests share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str = Field(max_length=80)


GOOD = {"category": "billing", "urgency": "normal", "summary": "Asks for the May invoice."}


class Lead(BaseModel):
    """A lead: a list field, a nullable one, one-line and long text, for the review forms."""

    company: str = Field(max_length=80)
    stage: Literal["new", "warm", "hot"]
    tags: list[str]
    owner: str | None
    summary: str
    notes: str = Field(default="", max_length=2000)
