"""What the OpenAPI document says of the routes: their request bodies and their answers.

The request bodies are parsed by :func:`heimdall_kms.admin.schemas.json_body` (after the
token check), not by FastAPI, so their schemas are declared here. Every error answer has the
:class:`~heimdall_kms.admin.schemas.ErrorBody` shape (docs/admin-api.md, "Errors").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from heimdall_kms.admin._http import MAX_BODY_BYTES
from heimdall_kms.admin.schemas import ErrorBody

__all__ = ["DENIED", "KMS_FAILED", "Responses", "body_doc", "error_doc"]

Responses = dict[int | str, dict[str, Any]]


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The answers every route with a role can give before (or instead of) doing its work.
DENIED: Responses = {
    401: error_doc("Missing or unknown bearer token (audited as access.denied)."),
    403: error_doc("The token's role may not use this endpoint (audited)."),
    413: error_doc(f"Request body larger than {MAX_BODY_BYTES} bytes."),
    422: error_doc("Invalid body or parameters; values are never echoed."),
    503: error_doc("The audit log cannot be written (fail closed)."),
}
# The answers of a route that calls the KMS, on top of DENIED.
KMS_FAILED: Responses = {
    **DENIED,
    429: error_doc("The KMS asks to slow down (Retry-After)."),
    502: error_doc("The KMS refused the service's credentials, or failed."),
    503: error_doc("The KMS is unavailable (Retry-After), or the audit log cannot be written."),
}


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route whose body
    :func:`~heimdall_kms.admin.schemas.json_body` parses.

    The models' nested definitions are written in place: pydantic's ``#/$defs/...``
    references would be resolved against the root of the OpenAPI document, where they name
    nothing, so a client generator or a fuzzer would not know what a batch item holds.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": _inline(schema, definitions)}},
        }
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/NAME"}`` replaced by that definition.

    The request models are not recursive, so this ends.
    """
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        target = definitions[reference.removeprefix("#/$defs/")]
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return _inline({**target, **rest}, definitions)
    return {key: _inline(value, definitions) for key, value in node.items()}
