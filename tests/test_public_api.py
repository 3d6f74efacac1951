"""The public surface: every error a user can meet is exported, and what the docs say to import
from a place can be imported from there."""

from __future__ import annotations

import importlib
import inspect

import smallops
import smallops.errors
import smallops.evals
import smallops.review
from smallops import SmallopsError, Workflow
from smallops.project import Project
from smallops.review import ReviewDesk


def test_every_error_a_user_can_meet_is_exported_from_the_package():
    errors = {
        name
        for name, value in vars(smallops.errors).items()
        if inspect.isclass(value) and issubclass(value, SmallopsError)
    }
    assert errors and errors <= set(smallops.__all__)
    assert all(getattr(smallops, name) is getattr(smallops.errors, name) for name in errors)


def test_each_documented_place_exports_what_it_names():
    testing = importlib.import_module("smallops.testing")
    for module in (smallops, smallops.evals, smallops.review, testing):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{module.__name__} names {missing} in __all__"
    assert {"reset", "recorded_runs", "FakeProvider"} <= set(testing.__all__)
    assert {"tolerance", "graded_by", "one_of"} <= set(smallops.evals.__all__)


def test_the_lifecycle_and_the_plan_are_private_by_name():
    for private in ("smallops._lifecycle", "smallops._plan"):
        importlib.import_module(private)
    assert not any(name.startswith("_") for name in smallops.__all__ if name != "__version__")


def test_the_review_desk_example_in_its_docstring_works(project, capsys):
    """`smallops.review`'s docstring shows an application reviewing through the desk."""
    from conftest import smallops as run_cli

    inputs = project / "one.jsonl"
    inputs.write_text('{"sender": "a@example.com", "subject": "Invoice", "body": "Where?"}\n')
    code, _, _ = run_cli(
        capsys, "--project", str(project), "run", "email-triage", "--input", str(inputs)
    )
    assert code == 0
    found = Project.find(project)
    desk = ReviewDesk(found.engine(), found.workflows)
    item = desk.claim_next("ann")
    assert item is not None and isinstance(found.workflow("email-triage"), Workflow)
    decision = desk.approve(item["run_id"], "ann")
    assert decision.action == "approve" and desk.claim_next("ann") is None
