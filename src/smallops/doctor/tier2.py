"""Tier 2, 10 to 25 people: structured outputs, cost tracked, an eval set of 20-50 examples
per workflow, and provider keys from a secret store rather than plain environment variables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smallops.config import own_key_variable
from smallops.doctor._words import count
from smallops.doctor.facts import WINDOW, LogState, Subject
from smallops.doctor.practices import Finding, Item, PracticeId, combine, joined, no_workflow
from smallops.errors import SmallopsError
from smallops.evals.dataset import workflow_cases
from smallops.pricing import has_price, vendor_of
from smallops.readiness import MIN_CASES
from smallops.records import Pricing
from smallops.secret_refs import SecretRef

#: Each store's name as a person says it, by its scheme in a secret reference.
STORE_NAMES = {
    "aws-sm": "AWS Secrets Manager",
    "vault": "Vault",
    "gcp-sm": "GCP Secret Manager",
    "op": "1Password",
    "doppler": "Doppler",
    "command": "a command",
}
#: The variable each SDK reads its key from when smallops.toml names none.
SDK_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def structured_outputs(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow answers with a pydantic model: validated, and reviewable field by field."""
    workflows = subject.production
    if not workflows:
        return no_workflow("structured_outputs")
    return combine("structured_outputs", [_structured(wf) for wf in workflows])


def _structured(wf: Any) -> Item:
    if wf.output is not None:
        return Item("pass", f"{wf.name} → {wf.output.__name__}")
    return Item(
        "warn",
        f"{wf.name} answers in free text",
        f"give {wf.name} output=AModel (pydantic): validated, reviewed field by field",
    )


def cost_tracked(subject: Subject, log: LogState, now: datetime) -> Finding:
    """The calls of the last 30 days are priced (an unknown price is recorded as unpriced,
    never $0); with no calls yet, every pinned model has a price."""
    practice: PracticeId = "cost_tracked"
    if log.figures is None:
        return Finding(
            practice, "warn", "not checked: the log is unreachable", "see Every call logged"
        )
    window = log.figures.window.values()
    calls = sum(w.calls for w in window)
    if not calls:
        return _prices_known(subject)
    priced = sum(w.priced_calls for w in window)
    cost = sum(w.cost_usd for w in window)
    unpriced = sorted({model for w in window for model in w.unpriced})
    days = f"{WINDOW.days} days"
    if priced == calls:
        return Finding(
            practice, "pass", f"all {count(calls, 'call')} in {days} priced: {_dollars(cost)}"
        )
    fix = f'set [prices."{unpriced[0]}"] in smallops.toml (USD per million tokens)'
    models = joined(unpriced, 30)
    if not priced:
        return Finding(
            practice, "fail", f"none of {count(calls, 'call')} in {days} priced ({models})", fix
        )
    return Finding(
        practice,
        "warn",
        f"{priced:,} of {count(calls, 'call')} in {days} priced; not {models}",
        fix,
    )


def _prices_known(subject: Subject) -> Finding:
    items = []
    for wf in subject.production:
        pricing = Pricing(
            vendor_of(wf.provider.name, wf.provider.kind),
            subject.settings.prices.get(str(wf.model)),
        )
        if has_price(pricing, wf.model.model):
            items.append(Item("pass", f"{wf.model} has a price"))
        else:
            items.append(
                Item(
                    "fail",
                    f"no price known for {wf.model}",
                    f'set [prices."{wf.model}"] in smallops.toml (USD per million tokens)',
                )
            )
    if not items:
        return no_workflow("cost_tracked")
    found = combine("cost_tracked", items)
    return Finding(
        found.practice, found.status, f"no calls in {WINDOW.days} days; {found.evidence}", found.fix
    )


def eval_sets(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Each workflow has 20 or more real examples to test a change on (20-50 is enough for the
    gate to be statistically honest; more is fine)."""
    workflows = subject.production
    if not workflows:
        return no_workflow("eval_sets")
    return combine("eval_sets", [_eval_set(wf, subject.root) for wf in workflows])


def _eval_set(wf: Any, root: Path) -> Item:
    where = _relative(wf.evals_path, root)
    try:
        cases = len(workflow_cases(wf))
    except SmallopsError as exc:
        return Item(
            "fail", f"{wf.name}: {exc.message}", exc.hint or f"write real examples to {where}"
        )
    if cases >= MIN_CASES:
        return Item("pass", f"{wf.name}: {count(cases, 'example')}")
    return Item(
        "warn",
        f"{wf.name}: {count(cases, 'example')} in {where}, fewer than {MIN_CASES}",
        f"add real ones (`smallops review export {wf.name}` turns reviewed outputs into cases)",
    )


def secrets_from_a_store(subject: Subject, log: LogState, now: datetime) -> Finding:
    """Every provider's key comes from a secret store, not from a plain environment variable:
    judged by the reference each workflow's provider holds (a provider made in a workflow's
    code may name another place than smallops.toml does)."""
    providers: dict[tuple[str, str], Item] = {}
    for wf in subject.workflows.values():
        for model_wf in (wf, wf.secondary):
            if model_wf is not None and model_wf.provider.kind != "fake":
                provider = model_wf.provider
                item = _key_source(provider.name, provider.kind, provider, subject)
                providers.setdefault((provider.name, item.evidence), item)
    if not subject.workflows:
        return no_workflow("secrets_from_a_store")
    if not providers:
        return Finding("secrets_from_a_store", "pass", "no provider needs a key (fake models only)")
    return combine("secrets_from_a_store", [providers[key] for key in sorted(providers)])


def _key_source(name: str, kind: str, provider: Any, subject: Subject) -> Item:
    config = subject.settings.providers.get(name)
    configured = config.api_key if config is not None else None
    keys = getattr(provider, "keys", None)  # the SDK providers: where their calls get the key
    ref: SecretRef | None = getattr(keys, "ref", None)
    if not isinstance(ref, SecretRef):
        ref = configured
    if ref is not None and ref.scheme != "env":
        return Item("pass", f"{name}: key from {STORE_NAMES.get(ref.scheme, ref.scheme)}")
    if getattr(keys, "keyless", False) and _on_this_machine(getattr(provider, "base_url", None)):
        return Item("pass", f"{name}: a server on this machine, no key needed")
    if ref is not None:
        variable = ref.path
    elif kind == "openai" and name != "openai":  # a compatible server reads its own variable
        variable = own_key_variable(name)
    else:
        variable = SDK_KEY_VARIABLES.get(kind, "its SDK's variable")
    store = f'"vault:secret/{name}#api_key"'
    fix = f"set [providers.{name}] api_key = {store} (or aws-sm:, op://, ...)"
    if configured is not None and configured.scheme != "env":  # overridden in a workflow's code
        fix = f"the {name} provider made in a workflow's code: give it api_key={store}"
    return Item("fail", f"{name}: key in ${variable}, not in a secret store", fix)


def _on_this_machine(base_url: str | None) -> bool:
    """A compatible server on the loopback (a local Ollama or vLLM): it needs no key to keep."""
    host = urlsplit(base_url or "").hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _dollars(amount: float) -> str:
    """Dollars and cents, or four decimals for the small sums of a few cheap calls."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"
