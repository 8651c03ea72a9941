"""Request and response bodies of the admin API, and the one place request JSON is parsed.

Bodies are strict (no type coercion) and closed (unknown keys are refused: a ``database``
field, for one). Validation errors name the field and the rule, never the value: a plaintext
is PII. Bodies are parsed by :func:`json_body`, a dependency that runs *after* the bearer-token
check, so an unauthenticated request is answered 401 whatever its body holds.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from heimdall_kms.envelope import _json
from heimdall_kms.envelope.kms_v1 import KMS_V1, KMS_V1_KEYS
from heimdall_kms.envelope.legacy import LEGACY_KEYS
from heimdall_kms.json_keys import RepeatedKeyError, unique_keys

__all__ = [
    "MAX_BATCH_ITEMS",
    "DecryptBatchRequest",
    "DecryptBatchResponse",
    "DecryptRequest",
    "DecryptResponse",
    "DecryptResult",
    "EncryptBatchRequest",
    "EncryptBatchResponse",
    "EncryptItem",
    "EncryptRequest",
    "EncryptResult",
    "EnvelopeItem",
    "ErrorBody",
    "Health",
    "ItemError",
    "JobAccepted",
    "JobStatus",
    "Problem",
    "ReencryptRequest",
    "RotateRequest",
    "json_body",
]

# The store's own rule (``store.base.Target``): a plain identifier, optionally schema-qualified.
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$"
Identifier = Annotated[str, StringConstraints(pattern=_IDENTIFIER)]
_LABEL_CHARS = 512
MAX_BATCH_ITEMS = 1000  # per batch request (docs/admin-api.md); the body limit applies too
_M = TypeVar("_M", bound=BaseModel)
_LEGACY_FIELDS = LEGACY_KEYS | {"encryption_version"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReencryptRequest(_Body):
    """Start a background job over one column (``heimdall-kms migrate`` / ``reencrypt``) of
    the service's own database. There is no database field: a request never names a URL or a
    connection parameter (it is refused as an unknown field)."""

    table: Identifier
    id_column: Identifier = "id"
    column: Identifier
    mode: Literal["migrate", "rewrap", "full"] = Field(
        "migrate",
        description="migrate: legacy env-key values to kms_v1 (needs HMD_ENCRYPTION_MODE="
        "hybrid); rewrap: re-wrap DEKs to the latest key version; full: fresh DEKs.",
    )
    batch_size: int = Field(250, ge=1, le=10_000, description="Rows per batch/transaction.")
    interval_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="Pause between two batches, in seconds, to leave KMS and database "
        "capacity to live traffic; 0 runs the batches back to back.",
    )


class RotateRequest(_Body):
    if_due: bool = Field(False, description="Only rotate when HMD_KEY_ROTATION_DAYS have passed.")
    reason: str | None = Field(None, min_length=1, max_length=_LABEL_CHARS)


# The rules check_context applies, for the documents of the single-value routes, which answer
# a context out of them with 422 (a batch item's is its own result, so its schema leaves them
# out). The bound on the whole context as JSON cannot be written in JSON Schema.
_CONTEXT_BOUNDS: dict[str, Any] = {
    "maxProperties": _json.MAX_CONTEXT_ENTRIES,
    "propertyNames": {"minLength": 1, "maxLength": _json.MAX_CONTEXT_KEY_CHARS},
    "additionalProperties": {"type": "string", "maxLength": _json.MAX_CONTEXT_VALUE_CHARS},
}
_ENCRYPT_CONTEXT = 'Non-secret context the value is bound to, e.g. {"field": "ssn"}.'
_DECRYPT_CONTEXT = "Where the value was read from; must match the envelope's context."
_KMS_V1_OBJECT = {
    "required": ["encryption_version"],
    "properties": {"encryption_version": {"const": KMS_V1}},
}


def _envelope_forms(schema: dict[str, Any]) -> None:
    """The object forms the validator below accepts: kms_v1's fields, or the legacy ones."""
    schema["anyOf"] = [
        {"type": "string"},
        {"type": "object", **_KMS_V1_OBJECT, "propertyNames": {"enum": sorted(KMS_V1_KEYS)}},
        {
            "type": "object",
            "not": _KMS_V1_OBJECT,
            "propertyNames": {"enum": sorted(_LEGACY_FIELDS)},
        },
    ]


class EncryptItem(_Body):
    plaintext: str
    context: dict[str, str] = Field(default_factory=dict, description=_ENCRYPT_CONTEXT)


class EncryptRequest(EncryptItem):
    context: dict[str, str] = Field(
        default_factory=dict, description=_ENCRYPT_CONTEXT, json_schema_extra=_CONTEXT_BOUNDS
    )


class EnvelopeItem(_Body):
    envelope: str | dict[str, Any] = Field(
        description="A kms_v1 (or legacy) envelope: the object, or its JSON text. The object "
        "form may hold only the fields of its format.",
        json_schema_extra=_envelope_forms,
    )
    context: dict[str, str] | None = Field(None, description=_DECRYPT_CONTEXT)

    @field_validator("envelope")
    @classmethod
    def _known_fields(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(value, dict):
            known = KMS_V1_KEYS if value.get("encryption_version") == KMS_V1 else _LEGACY_FIELDS
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown envelope field {unknown[0][:64]!r}")
        return value


class DecryptRequest(EnvelopeItem):
    context: dict[str, str] | None = Field(
        None, description=_DECRYPT_CONTEXT, json_schema_extra=_CONTEXT_BOUNDS
    )
    reason: str = Field(min_length=1, max_length=_LABEL_CHARS, description="Audited.")


class EncryptBatchRequest(_Body):
    items: list[EncryptItem] = Field(
        min_length=1, max_length=MAX_BATCH_ITEMS, description="Values to encrypt, in order."
    )


class DecryptBatchRequest(_Body):
    items: list[EnvelopeItem] = Field(
        min_length=1, max_length=MAX_BATCH_ITEMS, description="Envelopes to open, in order."
    )
    reason: str = Field(
        min_length=1, max_length=_LABEL_CHARS, description="Audited on every item's event."
    )


class ItemError(BaseModel):
    error_type: str
    detail: str
    retryable: bool = Field(description="True when the same item may succeed if sent again.")


class EncryptResult(BaseModel):
    envelope: dict[str, Any] | None = None
    error: ItemError | None = None


class DecryptResult(BaseModel):
    plaintext: str | None = None
    error: ItemError | None = None


class EncryptBatchResponse(BaseModel):
    results: list[EncryptResult] = Field(description="One per item, in order: envelope or error.")
    failed: int


class DecryptBatchResponse(BaseModel):
    results: list[DecryptResult] = Field(description="One per item, in order: plaintext or error.")
    failed: int


class DecryptResponse(BaseModel):
    plaintext: str


class JobAccepted(BaseModel):
    job_id: str


class JobStatus(BaseModel):
    state: Literal["idle", "running", "completed", "failed"]
    total: int
    completed: int
    failed: int
    skipped: int
    conflicts: int = 0
    job_id: str | None = None
    mode: str | None = None
    target: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    failures: list[dict[str, str]] = Field(
        default_factory=list, description="Ids of rows that failed (first 100)."
    )


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where: body or query, then the field's path.")
    msg: str = Field(description="The rule that was broken; the value is never echoed.")
    type: str


class ErrorBody(BaseModel):
    """Every error answer (docs/admin-api.md, "Errors")."""

    error_type: str = Field(description="The error class's label, e.g. invalid_request.")
    detail: str | list[Problem] = Field(
        description="The message (built without secrets), or for invalid_request the problems."
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    provider: str | None = None
    key: str | None = None
    error_type: str | None = None
    circuit: Literal["closed", "open", "half_open"] | None = None


def json_body(model: type[_M], *, optional: bool = False) -> Callable[[Request], Awaitable[_M]]:
    """A dependency that parses the request body as ``model`` (an empty body is ``{}`` when
    ``optional``).

    Raises:
        RequestValidationError: malformed JSON or an invalid field (answered 422).
    """

    async def parse(request: Request) -> _M:
        raw = await request.body()
        if optional and not raw.strip():
            raw = b"{}"
        _refuse_duplicate_keys(raw)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            ) from None

    return parse


def _refuse_duplicate_keys(raw: bytes) -> None:
    """A key repeated anywhere in the body (an envelope object's included) is refused: the
    JSON parser would keep one of the two silently, and another reader may take the other.

    Raises:
        RequestValidationError: a key appears twice.
    """
    try:
        json.loads(raw, object_pairs_hook=unique_keys)
    except RepeatedKeyError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "a key appears twice in one object", "type": "value_error"}]
        ) from None
    except (ValueError, RecursionError):
        return  # not JSON (or not UTF-8): the model's parser says so, as before
