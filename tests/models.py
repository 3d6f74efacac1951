"""Output models the tests share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str = Field(max_length=80)


GOOD = {"category": "billing", "urgency": "normal", "summary": "Asks for the May invoice."}
