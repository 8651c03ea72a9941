"""The context encoder gives exactly the general JSON encoder's bytes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_kms.context_json import (
    aad_json,
    context_json,
    context_json_ascii,
    line_json,
    stored_json,
)
from heimdall_kms.envelope import check_context

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)


@settings(max_examples=500)
@given(st.dictionaries(_text, _text, max_size=6))
def test_equals_sorted_compact_json(context: dict[str, str]) -> None:
    compact = {"sort_keys": True, "separators": (",", ":")}
    assert context_json_ascii(context) == json.dumps(context, **compact)  # type: ignore[arg-type]
    assert context_json(context) == json.dumps(context, ensure_ascii=False, **compact)  # type: ignore[arg-type]


def test_escapes_what_json_escapes() -> None:
    context = {"é": '"\\\n\u2028\x00', "a": "☃"}
    assert context_json_ascii(context) == json.dumps(context, sort_keys=True, separators=(",", ":"))
    assert json.loads(context_json(context)) == context


def test_anything_else_is_encoded_as_the_general_encoder_does() -> None:
    # A context that never passed check_context (an envelope built by hand): no crash, the
    # same bytes as before the fast path.
    odd = {"n": 1, "ok": True, "s": "x"}
    assert context_json_ascii(odd) == json.dumps(odd, sort_keys=True, separators=(",", ":"))
    assert context_json(odd) == json.dumps(odd, sort_keys=True, separators=(",", ":"))


class TestCheckedContextEncoding:
    """A checked context is encoded by the C encoder, made once; the same bytes."""

    @settings(max_examples=500)
    @given(st.dictionaries(_text.filter(bool), _text, max_size=6))
    def test_equals_sorted_compact_json(self, context: dict[str, str]) -> None:
        compact = {"sort_keys": True, "separators": (",", ":")}
        checked = check_context(context)
        assert aad_json(checked) == json.dumps(context, **compact)  # type: ignore[arg-type]
        assert line_json(checked) == json.dumps(context, ensure_ascii=False, **compact)  # type: ignore[arg-type]

    @settings(max_examples=300)
    @given(st.dictionaries(_text.filter(bool), _text, max_size=6))
    def test_stored_form_keeps_the_key_order(self, context: dict[str, str]) -> None:
        # What a stored envelope writes: the keys in their own order, non-ASCII kept.
        stored = stored_json(check_context(context))
        assert stored == json.dumps(context, separators=(",", ":"), ensure_ascii=False)

    def test_escapes_what_json_escapes(self) -> None:
        context = {"é": '"\\\n\u2028\x00\x7f', "a": "☃", "b": "plain"}
        checked = check_context(context)
        assert aad_json(checked) == json.dumps(context, sort_keys=True, separators=(",", ":"))
        assert line_json(checked) == json.dumps(
            context, ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )

    def test_str_subclass_entries(self) -> None:
        class Text(str):
            __slots__ = ()

        context = {Text("k"): Text("v\u00e9"), "a": "b"}
        checked = check_context(context)
        assert aad_json(checked) == json.dumps(context, sort_keys=True, separators=(",", ":"))
