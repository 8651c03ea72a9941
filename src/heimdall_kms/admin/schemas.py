"""Request and response bodies of the admin API, and the one place request JSON is parsed.

Bodies are strict (no type coercion) and closed (unknown keys are refused: a ``database``
field, for one). Validation errors name the field and the rule, never the value: a plaintext
is PII. Bodies are parsed by :func:`json_body`, a dependency that runs *after* the bearer-token
check, so an unauthenticated request is answered 401 whatever its body holds.
"""

from __future__ import annotations

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
)

__all__ = [
    "DecryptRequest",
    "DecryptResponse",
    "EncryptRequest",
    "Health",
    "JobAccepted",
    "JobStatus",
    "ReencryptRequest",
    "RotateRequest",
    "body_doc",
    "json_body",
]

# The store's own rule (``store.base.Target``): a plain identifier, optionally schema-qualified.
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$"
Identifier = Annotated[str, StringConstraints(pattern=_IDENTIFIER)]
_LABEL_CHARS = 512
_M = TypeVar("_M", bound=BaseModel)


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


class EncryptRequest(_Body):
    plaintext: str
    context: dict[str, str] = Field(
        default_factory=dict,
        description='Non-secret context the value is bound to, e.g. {"field": "ssn"}.',
    )


class DecryptRequest(_Body):
    envelope: str | dict[str, Any] = Field(description="A kms_v1 (or legacy) envelope.")
    context: dict[str, str] | None = Field(
        None, description="Where the value was read from; must match the envelope's context."
    )
    reason: str = Field(min_length=1, max_length=_LABEL_CHARS, description="Audited.")


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
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            ) from None

    return parse


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route whose body :func:`json_body` parses."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
