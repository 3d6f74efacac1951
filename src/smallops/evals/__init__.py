"""Eval sets run in CI with an honest regression gate.

The checks a workflow names per field are importable from here:

    from smallops.evals import tolerance
    Workflow(..., checks={"total": tolerance(0.01)})

The gate `smallops eval --ci` runs is `evals.gate` (`prepare_eval`, then `run_gate`); the model
comparison of `smallops drift` is `evals.compare.compare_models`.
"""

from smallops.evals.scorers import (
    Check,
    contains,
    custom,
    exact,
    graded_by,
    one_of,
    regex,
    schema_valid,
    tolerance,
)

__all__ = [
    "Check",
    "contains",
    "custom",
    "exact",
    "graded_by",
    "one_of",
    "regex",
    "schema_valid",
    "tolerance",
]
