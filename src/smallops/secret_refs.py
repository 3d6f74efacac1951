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

from dataclasses import dataclass

from smallops.errors import ConfigError

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
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in STORES:
            raise ConfigError(
                f"{where} is not a secret reference: keys never go in smallops.toml",
                hint=f"name where the key lives, {EXAMPLE} (schemes: {', '.join(STORES)})",
            )
        if scheme == "op":
            rest = rest.removeprefix("//")
        path, _, field = rest.partition("#") if scheme != "command" else (rest, "", "")
        if not path.strip():
            raise ConfigError(f"{where} names the {scheme} store but no secret", hint=EXAMPLE)
        return cls(scheme, path.strip(), field.strip() or None)

    def __str__(self) -> str:
        head = "op://" if self.scheme == "op" else f"{self.scheme}:"
        return head + self.path + (f"#{self.field}" if self.field else "")
