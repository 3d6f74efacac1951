"""`smallops secrets check`: can every provider's key be had, and from where? Never the value."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from smallops.cli import _common

if TYPE_CHECKING:
    from smallops.project import Project
    from smallops.providers import Provider
    from smallops.secrets.keys import KeySource

app = typer.Typer(
    help="Provider keys in secret stores: check that each can be had.", no_args_is_help=True
)

#: What each scheme's store is called in the output.
STORE_NAMES = {
    "env": "environment",
    "aws-sm": "AWS Secrets Manager",
    "vault": "Vault KV v2",
    "gcp-sm": "GCP Secret Manager",
    "op": "1Password",
    "doppler": "Doppler",
    "command": "command",
}


@dataclass
class KeyCheck:
    """One provider's key, as `--json` prints it: where it lives and whether it can be had."""

    provider: str
    reference: str
    store: str
    source: str  # where the reference was set
    workflows: list[str] = field(default_factory=list)  # the workflows that use this provider
    ok: bool = False
    keyless: bool = False  # an unset env variable, for a server that needs no key
    version: str | None = None  # the store's version id, where it has one
    updated_at: datetime | None = None  # when the store last changed the key, where it knows
    problem: str | None = None
    hint: str | None = None


@app.command("check")
def check_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per provider."),
) -> None:
    """Fetch every provider's key as a call would: the providers of smallops.toml, and the
    built-in ones the workflows use. Says where each key lives, its version and age where the
    store knows them, and any problem; never the key. Exit 1 when any key cannot be had (or a
    workflow module does not load, so its providers are unknown).
    """
    project = _common.project(ctx)
    found, broken = _providers(project)
    for problem in broken:
        _common.err.print(
            f"error: {problem} (the providers it uses are not checked)",
            markup=False,
            soft_wrap=True,
        )
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(found)))) as pool:
        checks = list(pool.map(lambda item: _check(project, *item), found.items()))
    if as_json:
        for check in checks:
            _common.print_json(asdict(check))
    else:
        _print(checks)
    if broken or any(not check.ok for check in checks):
        raise typer.Exit(1)


def _providers(project: Project) -> tuple[dict[str, tuple[Provider, list[str]]], list[Any]]:
    """The providers to check, each with the workflows using it: every provider configured in
    smallops.toml, and each one a workflow (or its secondary model) uses."""
    from smallops.providers import resolve_provider

    settings = project.settings
    found: dict[str, tuple[Provider, list[str]]] = {}
    workflows, broken = project.load_workflows()
    for wf in workflows.values():
        chain: Any = wf
        while chain is not None:
            provider, users = found.setdefault(chain.provider.name, (chain.provider, []))
            if wf.name not in users:
                users.append(wf.name)
            chain = chain.secondary
    for name in settings.providers:
        if name not in found:
            provider = resolve_provider(name, settings.providers, settings.secrets, settings.root)
            found[name] = (provider, [])
    keyed = {name: entry for name, entry in found.items() if hasattr(entry[0], "keys")}
    return dict(sorted(keyed.items())), broken


def _check(project: Project, name: str, entry: tuple[Provider, list[str]]) -> KeyCheck:
    from smallops.errors import SmallopsError
    from smallops.secrets.base import SecretStoreError
    from smallops.secrets.keys import PLACEHOLDER

    provider, users = entry
    keys: KeySource = getattr(provider, "keys")  # noqa: B009 - only SDK providers have keys
    check = KeyCheck(
        provider=name,
        reference=str(keys.ref),
        store=STORE_NAMES.get(keys.ref.scheme, keys.ref.scheme),
        source=_source(project, name, provider),
        workflows=users,
    )
    try:
        fetched = keys.fetch()
    except (SecretStoreError, SmallopsError) as exc:
        check.problem, check.hint = exc.message, exc.hint or None
        return check
    check.ok = True
    check.keyless = fetched.value == PLACEHOLDER and keys.keyless
    check.version, check.updated_at = fetched.version, fetched.updated_at
    return check


def _source(project: Project, name: str, provider: Provider) -> str:
    """Where the key's reference was set: smallops.toml, the default, or (for a provider made
    in a workflow's code, whatever its name) that code."""
    from smallops.errors import SmallopsError
    from smallops.providers import resolve_provider

    settings = project.settings
    try:
        configured = resolve_provider(name, settings.providers, settings.secrets, settings.root)
    except SmallopsError:  # a name neither smallops.toml nor the built-ins know
        configured = None
    if configured is not provider:
        return "the workflow's code"
    config = settings.providers.get(name)
    if config is not None and config.api_key is not None:
        return f"[providers.{name}] in smallops.toml"
    return "the default"


def _print(checks: list[KeyCheck]) -> None:
    from smallops.cli._table import Column, print_fitted
    from smallops.review.triage import age_text

    if not checks:
        _common.out.print("no providers with keys: nothing to check", markup=False)
        return
    now = datetime.now(timezone.utc)
    columns = [  # hidden first when narrow: the store (the reference names it), where it is set
        Column("provider", cut_to=12),
        Column("reference", cut_to=30),
        Column("store", cut_to=11, hide=5),
        Column("key"),
        Column("version", cut_to=9, hide=3),
        Column("updated", hide=2),
        Column("set in", hide=4),
    ]
    rows = [
        [
            c.provider,
            c.reference,
            c.store,
            ("none needed" if c.keyless else "ok") if c.ok else "FAILED",
            c.version or "",
            f"{age_text((now - _aware(c.updated_at)).total_seconds())} ago" if c.updated_at else "",
            "smallops.toml" if c.source.endswith("smallops.toml") else c.source,
        ]
        for c in checks
    ]
    print_fitted(columns, rows)
    for c in checks:
        if c.problem:
            _common.wrapped("✗ ", escape(f"{c.provider}: {c.problem}"))
            if c.hint:
                _common.wrapped("    ", escape(f"fix: {c.hint}"))
    failed = sum(not c.ok for c in checks)
    summary = f"{len(checks) - failed} of {len(checks)} keys can be had"
    _common.out.print(summary + ("" if failed else "; none was printed"), markup=False)


def _aware(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
