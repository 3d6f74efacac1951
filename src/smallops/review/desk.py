"""The review desk: what a reviewer can do, with the project's workflows at hand.

The CLI and the web UI are skins over this. It approves only outputs that validate (anything
else can be corrected, with valid output, or rejected), validates corrections against the
workflow's output schema, requires a reason to reject, demotes the classes of a failed audit,
writes the webhook outbox in the decision's transaction and sends the decision's webhook right
after it, and runs the workflow's `on_decision` hook after the decision is committed (a failing
hook is noted on the decision; the decision stands).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from smallops.errors import InputError, Unapprovable, describe_problems
from smallops.jsonl import check_depth, parse
from smallops.labels import class_fields
from smallops.review import evidence, webhooks
from smallops.review.queue import DEFAULT_LEASE, Check, Decision, ReviewQueue
from smallops.storage.health import first_line

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.storage.db import Connection, Engine
    from smallops.workflow import Workflow

log = logging.getLogger("smallops")
NOT_APPROVABLE = "correct it with valid output, or reject it; nothing was changed"


class ReviewDesk:
    """Reviewer actions on one project's queue."""

    def __init__(self, engine: Engine, workflows: Mapping[str, Workflow[Any]]) -> None:
        self.engine = engine
        self.workflows = workflows
        self.queue = ReviewQueue(engine)
        self._sends: list[_Send] = []  # the webhooks of this desk's decisions, for finish_sending
        self._sends_lock = threading.Lock()
        self._forms: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (workflow, version)

    def items(
        self, workflow: str | None = None, state: str | None = "pending", limit: int = 100
    ) -> list[dict[str, Any]]:
        return self.queue.items(workflow, state=state, limit=limit)

    def item(self, run_id: str) -> dict[str, Any]:
        """An item, with the form its output calls for: field names, types and choices."""
        item = self.queue.item(run_id)
        workflow = self.workflows.get(item["workflow"])
        item["fields"] = self.form(workflow)
        item["free_text"] = workflow is not None and workflow.output is None
        return item

    def form(self, workflow: Workflow[Any] | None) -> list[dict[str, Any]]:
        """`form_fields` of a workflow's output, made once per workflow and prompt version (its
        JSON schema is costly to generate); each call gets its own copy."""
        if workflow is None:
            return []
        key = (workflow.name, workflow.version.id)
        fields = self._forms.get(key)
        if fields is None:
            fields = self._forms[key] = form_fields(workflow.output)
        return [dict(field, choices=list(field["choices"])) for field in fields]

    def claim_next(
        self,
        reviewer: str,
        workflow: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        *,
        exclude: Collection[str] = (),
    ) -> dict[str, Any] | None:
        run_id = self.queue.lease_next(reviewer, workflow, lease, exclude=exclude)
        return self.item(run_id) if run_id is not None else None

    def claim_next_id(
        self,
        reviewer: str,
        workflow: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        *,
        exclude: Collection[str] = (),
    ) -> str | None:
        """`claim_next` for a caller that shows the item later: only the run id claimed."""
        return self.queue.lease_next(reviewer, workflow, lease, exclude=exclude)

    def claim(self, run_id: str, reviewer: str, lease: timedelta = DEFAULT_LEASE) -> dict[str, Any]:
        self.queue.lease(run_id, reviewer, lease)
        return self.item(run_id)

    def claim_id(self, run_id: str, reviewer: str, lease: timedelta = DEFAULT_LEASE) -> None:
        """`claim` without reading the item back."""
        self.queue.lease(run_id, reviewer, lease)

    def skip(self, run_id: str, reviewer: str) -> None:
        self.queue.release(run_id, reviewer)

    def unclaim(self, claims: Mapping[str, str]) -> int:
        """Give back items claimed and not decided (run id -> reviewer); see ReviewQueue."""
        return self.queue.unclaim(claims)

    def approvable(self, item: Mapping[str, Any]) -> str | None:
        """None when an item's output may be approved as it is; otherwise why not.

        Approving hands the output to the application and to the eval set, so only a valid one
        can be: the partial answer of a failed call (truncated, invalid JSON, a schema mismatch),
        or an output that no longer fits the workflow's schema, can only be corrected (with valid
        output) or rejected. A workflow this desk does not define is not checked beyond that.
        """
        if item["output"] is None:
            failed = f" (the model failed: {item['error_type']})" if item["error_type"] else ""
            return f"there is no output to approve{failed}"
        workflow = self.workflows.get(item["workflow"])
        misfit = output_problem(workflow, item["output"]) if workflow is not None else None
        if item["reason"] == "fallback":
            left = f"the model's answer failed ({item['error_type']}): this is only what it left"
            return f"{left}; {misfit}" if misfit else left
        return misfit

    def approve(self, run_id: str, reviewer: str) -> Decision:
        """Approve a pending item's output as it is, if `approvable` (otherwise `Unapprovable`).
        The item is read once, locked, in the decision's transaction."""

        def check(item: dict[str, Any]) -> None:
            problem = self.approvable(item)
            if problem is not None:
                raise Unapprovable(
                    f"run {run_id} cannot be approved: {problem}", hint=NOT_APPROVABLE
                )

        return self._decide(run_id, reviewer, "approve", check=check)

    def correct(self, run_id: str, reviewer: str, output: Any) -> Decision:
        item = self.queue.item(run_id)
        fixed = self.validate(item["workflow"], output)
        return self._decide(run_id, reviewer, "correct", output=fixed)

    def reject(self, run_id: str, reviewer: str, reason: str | None) -> Decision:
        if not reason or not reason.strip():
            raise InputError("a rejection needs a reason", hint="say why, e.g. 'not a customer'")
        return self._decide(run_id, reviewer, "reject", reason=reason.strip())

    def validate(self, workflow_name: str, output: Any, what: str = "the corrected output") -> Any:
        """A corrected output, checked against the workflow's schema; JSON text is parsed."""
        workflow = self.workflows.get(workflow_name)
        if workflow is None:
            raise InputError(
                f"workflow {workflow_name!r} is not defined in this project",
                hint="corrections are checked against the workflow's output schema",
            )
        if workflow.output is None:
            if not isinstance(output, str) or not output.strip():
                raise InputError(f"{what} must be non-empty text")
            return output
        if isinstance(output, str):
            output = parse(output, what)
        check_depth(output, what)
        try:
            return workflow.output.model_validate(output).model_dump(mode="json")
        except ValidationError as exc:
            problems = describe_problems(exc.errors(include_url=False))
            raise InputError(
                f"{what} does not fit {workflow.output.__name__}: {problems}",
                hint="nothing was changed",
            ) from None

    def _decide(
        self,
        run_id: str,
        reviewer: str,
        action: str,
        *,
        output: Any = None,
        reason: str | None = None,
        check: Check | None = None,
    ) -> Decision:
        reviewer = reviewer.strip()
        if not reviewer:
            raise InputError("a decision needs a reviewer name", hint="--reviewer NAME")
        decision = self.queue.decide(
            run_id,
            reviewer,
            action,
            output=output,
            reason=reason,
            extra=self._with_decision,
            check=check,
        )
        workflow = self.workflows.get(decision.workflow)
        if workflow is not None:
            if workflow.webhook:
                self._send_soon(decision)
            self._run_hook(workflow, decision)
        return decision

    def finish_sending(self, within: float) -> list[str]:
        """Wait up to `within` seconds for the webhooks of this desk's decisions; give back the
        lease of any still being sent, so that `smallops serve` or `smallops review deliver` can
        send it at once. A process about to exit calls this. Returns a note for each decision
        whose webhook was not delivered."""
        deadline = time.monotonic() + within
        with self._sends_lock:
            sends, self._sends = self._sends, []
        notes, unfinished = [], []
        for send in sends:
            send.thread.join(max(0.0, deadline - time.monotonic()))
            if send.thread.is_alive():
                send.stop.set()
                unfinished.append(send.run_id)
                notes.append(
                    f"the webhook of run {send.run_id} was not sent within {within:g} s; "
                    "`smallops serve` or `smallops review deliver` sends it"
                )
            elif send.note:
                notes.append(send.note)
        if unfinished:
            webhooks.give_back(self.engine, unfinished)
        return notes

    def _with_decision(
        self, connection: Connection, item: dict[str, Any], decision: dict[str, Any]
    ) -> None:
        """In the decision's transaction: the webhook outbox, and the demotion of a failed audit."""
        workflow = self.workflows.get(item["workflow"])
        if workflow is not None and workflow.webhook:
            webhooks.enqueue(connection, workflow.webhook, decision)
        if item["route"] == "audit" and decision["action"] != "approve" and item["classes"]:
            demoted = evidence.demote_for_audit(
                connection,
                item,
                f"failed audit of run {item['run_id']}: {decision['status']} by "
                f"{decision['reviewer']}",
            )
            graduation = workflow.plan().graduation if workflow is not None else None
            if graduation is not None:
                graduation.forget(demoted)

    def _run_hook(self, workflow: Workflow[Any], decision: Decision) -> None:
        if workflow.on_decision is None:
            return
        try:
            workflow.on_decision(decision)
        except Exception as exc:
            log.exception("smallops: on_decision hook of %s failed", workflow.name)
            try:
                self.queue.set_hook_error(decision.run_id, f"{type(exc).__name__}: {exc}")
            except Exception as note_failed:  # the decision is saved: it stands regardless
                log.warning(
                    "smallops: could not note the failed hook on run %s: %s",
                    decision.run_id,
                    first_line(note_failed),
                )

    def _send_soon(self, decision: Decision) -> None:
        """Send the decision's webhook now, in the background (`finish_sending` waits for it)."""
        send = _Send(decision.run_id)
        send.thread = threading.Thread(
            target=self._send, args=(decision.workflow, send), daemon=True, name="smallops-webhooks"
        )
        with self._sends_lock:  # a long-lived process keeps only those with news
            self._sends = [s for s in self._sends if s.thread.is_alive() or s.note] + [send]
        send.thread.start()

    def _send(self, workflow: str, send: _Send) -> None:
        later = "`smallops serve` or `smallops review deliver` retries it"
        what = None
        try:
            secrets, problems = webhooks.signing_secrets([self.workflows[workflow]])
            if problems:
                what = f"not sent: {problems[workflow]}"
            elif webhooks.deliver_due(
                self.engine, secrets, run_id=send.run_id, limit=1, stop=send.stop
            )[1]:
                what = f"not delivered; {later}"
        except Exception as exc:
            what = f"not sent ({first_line(exc)}); {later}"
        if what is not None:
            send.note = f"the webhook of run {send.run_id} was {what}"
            log.info("smallops: %s", send.note)  # `finish_sending` reports it; serve retries it


@dataclass
class _Send:
    """One decision's webhook, sent in a background thread; `note` says if it did not arrive."""

    run_id: str
    thread: threading.Thread = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)  # given up on: send no more
    note: str | None = None


def output_problem(workflow: Workflow[Any], output: Any) -> str | None:
    """Why an output as stored (JSON: an object, or text) is not a valid output of `workflow`
    today; None when it is."""
    if workflow.output is None:
        return None if isinstance(output, str) and output.strip() else "the output is not text"
    try:
        workflow.output.model_validate_json(json.dumps(output))
    except ValidationError as exc:
        problems = describe_problems(exc.errors(include_url=False))
        return f"the output does not fit {workflow.output.__name__}: {problems}"
    return None


def form_fields(output: type[BaseModel] | None) -> list[dict[str, Any]]:
    """The fields of an output model as a form: name, type, choices, description, required;
    `nullable` when null is allowed (Optional, `anyOf` with null) and `items` the type of an
    array's entries ("string" for a list[str])."""
    if output is None:
        return []
    schema = output.model_json_schema()
    choices = class_fields(output)
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf", [])
        shape = next((o for o in options if o.get("type") != "null"), prop) if options else prop
        kind = prop.get("type") or shape.get("type") or "string"
        fields.append(
            {
                "name": name,
                "title": prop.get("title", name),
                "type": "choice" if name in choices else kind,
                "choices": choices.get(name, []),
                "description": prop.get("description", ""),
                "required": name in required,
                "max_length": prop.get("maxLength", shape.get("maxLength")),
                "nullable": any(o.get("type") == "null" for o in options),
                "items": (shape.get("items") or {}).get("type") if kind == "array" else None,
            }
        )
    return fields
