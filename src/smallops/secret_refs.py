"""Secret references: where a provider key lives, written in smallops.toml instead of the key.

A reference is `SCHEME:PATH[#FIELD]`, with one scheme per store:

    env:OPENAI_API_KEY                    an environment variable (the default)
    aws-sm:prod/openai#api_key            AWS Secrets Manager: name or ARN, optional JSON field
    vault:secret/openai#api_key           HashiCorp Vault KV v2: mount, path and field
    gcp-sm:my-project/openai-key#3        GCP Secret Manager: project, secret, optional version
    op://Private/OpenAI/credential        1Password: its own secret-reference syntax
    doppler:OPENAI_API_KEY                Doppler: a secret of the service token's config
    command:pass show openai              any command whose stdout is the secret

Parsed where smallops.toml is read; the stores themselves live in smallops.secrets.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from smallops.errors import ConfigError
from smallops.redact import Redactor

#: Scheme -> "module:Class" of its store, imported only when a reference uses it.
STORES: dict[str, str] = {
    "env": "smallops.secrets.stores.env:EnvStore",
    "aws-sm": "smallops.secrets.stores.aws:AwsSecretsManager",
    "vault": "smallops.secrets.stores.vault:VaultKV2",
    "gcp-sm": "smallops.secrets.stores.gcp:GcpSecretManager",
    "op": "smallops.secrets.stores.onepassword:OnePassword",
    "doppler": "smallops.secrets.stores.doppler:Doppler",
    "command": "smallops.secrets.stores.command:CommandStore",
}
EXAMPLE = 'e.g. api_key = "env:OPENAI_API_KEY" or "aws-sm:prod/openai#api_key"'
#: Longer than any store's name for a secret (or a command line): a reference this long would
#: fill every message and log row that names it.
MAX_LENGTH = 1024
#: Stores whose path goes into a URL's path as it is: `..` there would name another resource
#: than the one written (the server or the HTTP library resolves it), `?` and `%` another query.
URL_PATHS = ("vault", "gcp-sm")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: a store's scheme, a path inside it, and an optional field."""

    scheme: str
    path: str
    field: str | None = None

    @classmethod
    def parse(cls, text: str, where: str = "api_key") -> SecretRef:
        """A reference from its text; a ConfigError (never echoing the text, which may be a
        pasted key) when it is not one."""
        if len(text) > MAX_LENGTH:
            raise ConfigError(
                f"{where} is {len(text):,} characters long, not a secret reference",
                hint=f"a reference names where the key lives, {EXAMPLE}",
            )
        scheme, sep, rest = text.strip().partition(":")
        if not sep or scheme not in STORES:
            raise ConfigError(
                f"{where} is not a secret reference: keys never go in smallops.toml",
                hint=f"name where the key lives, {EXAMPLE} (schemes: {', '.join(STORES)})",
            )
        if _looks_like_a_key(text):
            raise ConfigError(
                f"{where} holds something shaped like a key (sk-..., AKIA..., Bearer ...): "
                "keys never go in smallops.toml",
                hint=f"name where the key lives, {EXAMPLE}; a secret whose own name looks "
                "like a key needs another name",
            )
        if not text.isprintable():
            raise ConfigError(
                f"{where} holds a line break or a control character",
                hint=f"a reference is one line of text, {EXAMPLE}",
            )
        if scheme == "op":
            rest = rest.removeprefix("//")
        path, _, field = rest.partition("#") if scheme != "command" else (rest, "", "")
        if not path.strip():
            raise ConfigError(f"{where} names the {scheme} store but no secret", hint=EXAMPLE)
        ref = cls(scheme, path.strip(), field.strip() or None)
        _check(ref, where)
        return ref

    def __str__(self) -> str:  # what messages and `smallops secrets check` name it by
        head = "op://" if self.scheme == "op" else f"{self.scheme}:"
        return head + self.path + (f"#{self.field}" if self.field else "")


def _looks_like_a_key(text: str) -> bool:
    """A key pasted where its reference goes: shaped like one (sk-..., AKIA..., Bearer ...)."""
    return Redactor()(text) != text


def _check(ref: SecretRef, where: str) -> None:
    """What can be told of a reference without asking its store; never echoing it (it may be
    a key pasted in the wrong place)."""
    if ref.scheme == "env" and (
        not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref.path) or _shaped_like_a_secret(ref.path)
    ):
        raise ConfigError(
            f"{where} must name an environment variable (letters, digits and _), not hold a key",
            hint='e.g. "env:OPENAI_API_KEY"',
        )
    if ref.scheme == "env" and ref.field is not None:
        raise ConfigError(
            f"{where} names a #field of an environment variable, which has none",
            hint='e.g. "env:OPENAI_API_KEY"',
        )
    if ref.scheme == "op" and ref.field is not None:  # a Connect server would read another
        raise ConfigError(
            f"{where} names a #field: a 1Password reference names its field in its path",
            hint='e.g. "op://Private/OpenAI/credential" or "op://Prod/OpenAI/api/key"',
        )
    if ref.scheme in URL_PATHS:
        version = ref.field if ref.scheme == "gcp-sm" else None  # a field is no URL's part
        parts = [*ref.path.split("/"), version or ""]
        if any(part in (".", "..") or "?" in part or "%" in part for part in parts):
            raise ConfigError(
                f"{where} has a . or .. segment, a ? or a % in its path: "
                f"the {ref.scheme} store would read another secret than the one named",
                hint='e.g. "vault:secret/openai#api_key" or "gcp-sm:my-project/openai-key#3"',
            )
    if ref.scheme == "command":
        try:
            words = shlex.split(ref.path)
        except ValueError:
            words = []
        if not words:
            raise ConfigError(
                f"{where} is a command that cannot be split into words (check its quotes)",
                hint='e.g. "command:pass show openai" (run as is, without a shell)',
            )
        option = next((word for word in words[1:] if _CREDENTIAL_OPTION.match(word)), None)
        if option is not None:
            raise ConfigError(
                f"{where} gives the command a credential on its command line "
                f"({option.partition('=')[0]}): the reference is shown in messages and status",
                hint="let the command read it from its environment (e.g. VAULT_TOKEN), or from "
                "a file it is given the path of",
            )


#: An option of a command that passes a credential (--token=..., --password ..., --api-key):
#: its value would be in the reference, which every message and `status` names.
#: (Not a bare --secret, which names the secret in `gcloud secrets versions access --secret=X`.)
_CREDENTIAL_OPTION = re.compile(
    r"--?(?!-|no-)[A-Za-z0-9_-]*"
    r"(token|password|passwd|client[-_]secret|secret[-_]key|api[-_]?key|access[-_]key)(=.*)?$",
    re.IGNORECASE,
)


def _shaped_like_a_secret(name: str) -> bool:
    """A long "name" with no underscore that is not in capitals is a key (the same rule as the
    alert channels' *_env settings)."""
    return len(name) >= 20 and "_" not in name and not name.isupper()
