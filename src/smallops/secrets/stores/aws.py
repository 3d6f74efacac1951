"""`aws-sm:NAME_OR_ARN[#field]`: a key in AWS Secrets Manager (the `aws` extra, boto3).

The secret's current version (AWSCURRENT) is read: its SecretString, or one field of it when it
is a JSON object. boto3 finds credentials, region and endpoint as it always does (AWS_PROFILE,
AWS_ACCESS_KEY_ID..., an instance role; AWS_DEFAULT_REGION or the profile's region;
AWS_ENDPOINT_URL, e.g. a LocalStack or moto server). An ARN's own region wins; AWS_REGION (what
Lambda and the other SDKs set, which boto3 does not read) is used when boto3 finds none.
Connect and read timeouts are the [secrets] fetch_timeout, with one retry, so a store that is
down fails fast and the cached key serves meanwhile.
"""

from __future__ import annotations

import json
import os
from typing import Any

from smallops.errors import MissingExtraError
from smallops.redact import Redactor
from smallops.secret_refs import SecretRef
from smallops.secrets.base import FETCH_TIMEOUT, Fetched, SecretStoreError

STORE = "AWS Secrets Manager"
#: Error codes that say AWS could not be asked now (the cached key keeps serving).
TRANSIENT = {
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
    "ExpiredTokenException",  # the session's credentials expire before they are refreshed
}
#: Error code -> (what it means, how to fix it): the answers that are a no.
REFUSED = {
    "ResourceNotFoundException": (
        "no such secret",
        "check the name and the region (AWS_DEFAULT_REGION), or give the secret's ARN",
    ),
    "AccessDeniedException": (
        "access denied",
        "allow secretsmanager:GetSecretValue on this secret to the role smallops runs as",
    ),
    "DecryptionFailure": (
        "AWS could not decrypt it",
        "allow kms:Decrypt on the secret's KMS key to the role smallops runs as",
    ),
    "UnrecognizedClientException": (
        "AWS does not know these credentials",
        "check AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    ),
    "InvalidSignatureException": (
        "AWS refused the request's signature",
        "check AWS_SECRET_ACCESS_KEY, and that the clock is right",
    ),
}


class AwsSecretsManager:
    """GetSecretValue, one fresh client per fetch (fetches are rare; credentials, region and
    endpoint are then read as they are now)."""

    def __init__(self) -> None:
        try:
            import boto3
            import botocore.config
        except ImportError:
            raise MissingExtraError("boto3", "aws", "aws-sm: keys (AWS Secrets Manager)") from None
        self._boto3 = boto3
        self._config = botocore.config.Config

    def fetch(self, ref: SecretRef) -> Fetched:
        from botocore import exceptions

        timeout = FETCH_TIMEOUT.get()
        try:
            session = self._boto3.session.Session()
            client = session.client(
                "secretsmanager",
                region_name=_arn_region(ref.path)
                or session.region_name
                or os.environ.get("AWS_REGION"),
                config=self._config(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
            answer = client.get_secret_value(SecretId=ref.path)
        except exceptions.ClientError as exc:
            raise _refused(ref, exc.response) from None
        except (exceptions.ConnectionError, exceptions.HTTPClientError) as exc:
            raise SecretStoreError(
                f"{ref}: {STORE} did not answer ({type(exc).__name__})",
                unreachable=True,
                hint="check the network path to AWS (or AWS_ENDPOINT_URL)",
            ) from None
        except exceptions.NoRegionError:
            raise SecretStoreError(
                f"{ref}: no AWS region is set",
                hint="set AWS_DEFAULT_REGION (or AWS_REGION), or give the secret's ARN",
            ) from None
        except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError):
            raise SecretStoreError(
                f"{ref}: no AWS credentials were found",
                hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or run "
                "with a role",
            ) from None
        except exceptions.BotoCoreError as exc:
            raise SecretStoreError(
                f"{ref}: {STORE} could not be asked ({type(exc).__name__})", unreachable=True
            ) from None
        return Fetched(
            _value(ref, answer),
            version=answer.get("VersionId"),
            updated_at=answer.get("CreatedDate"),
        )


def _arn_region(path: str) -> str | None:
    """The region in an ARN (arn:aws:secretsmanager:REGION:...), where the secret lives."""
    parts = path.split(":")
    return parts[3] or None if len(parts) > 3 and parts[0] == "arn" else None


def _refused(ref: SecretRef, response: dict[str, Any]) -> SecretStoreError:
    error = response.get("Error") or {}
    code = str(error.get("Code") or "Unknown")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    if code in TRANSIENT or (isinstance(status, int) and status >= 500):
        return SecretStoreError(f"{ref}: {STORE} is unavailable ({code})", unreachable=True)
    meaning, hint = REFUSED.get(code, (None, ""))
    if meaning is None:
        said = " ".join(str(error.get("Message") or "").split())[:200]
        meaning = f"{code}: {Redactor()(said)}" if said else code
    return SecretStoreError(f"{ref}: {meaning}", hint=hint)


def _value(ref: SecretRef, answer: dict[str, Any]) -> str:
    """The SecretString (or the binary secret as UTF-8 text), or its JSON field."""
    text = answer.get("SecretString")
    if text is None:
        binary = answer.get("SecretBinary")
        try:
            text = bytes(binary).decode("utf-8") if binary is not None else None
        except (TypeError, UnicodeDecodeError):
            raise SecretStoreError(f"{ref}: the binary secret is not UTF-8 text") from None
    if text is None:
        raise SecretStoreError(f"{ref}: the secret has no value")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if ref.field is None:
        if isinstance(document, dict):  # sent whole, it would hand every field to the provider
            raise SecretStoreError(
                f"{ref}: the secret is a JSON object; name the field that holds the key",
                hint=f"e.g. {ref}#api_key",
            )
        return str(text)
    if not isinstance(document, dict):
        raise SecretStoreError(
            f"{ref}: the secret is not a JSON object, so it has no field '{ref.field}'",
            hint=f"drop #{ref.field} to use the whole secret",
        )
    if ref.field not in document:
        raise SecretStoreError(
            f"{ref}: the secret has no field '{ref.field}' ({len(document)} fields)",
            hint="check the field's name (it is case-sensitive)",
        )
    value = document[ref.field]
    if not isinstance(value, str):
        raise SecretStoreError(f"{ref}: the field '{ref.field}' is not a string")
    return value
