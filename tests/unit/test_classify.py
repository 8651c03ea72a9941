"""What the census and the jobs take a stored value to be (jobs.classify, jobs.jsonpath)."""

from __future__ import annotations

import base64
import json

import pytest

from heimdall_kms.envelope import LegacyEnvelope, _json
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.jobs.classify import Classified, Slot, ValueKind, classify
from heimdall_kms.jobs.jsonpath import DocumentError, Span, locate
from tests.legacy_data import legacy_envelope

ENVELOPE = legacy_envelope("ab" * 32, "123-45-6789")


class TestLocate:
    """The exact characters of the value at a dotted path."""

    @pytest.mark.parametrize(
        ("document", "path", "expected"),
        [
            ('{"raw": "x"}', ("raw",), '"x"'),
            ('{ "a" : { "b" :[1, {"c": 2}] , "raw":{"k": 1}} }', ("a", "raw"), '{"k": 1}'),
            ('{"r\\u0061w": 5}', ("raw",), "5"),  # keys compare as decoded text
            ('{"a": 1}', ("raw",), None),
            ('{"a": {"b": 1}}', ("a", "raw"), None),
        ],
    )
    def test_finds_the_span(
        self, document: str, path: tuple[str, ...], expected: str | None
    ) -> None:
        span = locate(document, path)
        assert (None if span is None else document[span.start : span.end]) == expected

    @pytest.mark.parametrize(
        ("document", "path"),
        [
            ('{"raw": 1, "raw": 2}', ("raw",)),
            ('{"a": {"raw": 1, "raw": 2}}', ("a", "raw")),
            ('{"raw": 1} x', ("raw",)),
            ('["raw"]', ("raw",)),
            ('{"a": [1]}', ("a", "raw")),
            ('{"raw": 1,}', ("raw",)),
        ],
    )
    def test_refuses_what_two_readers_could_read_differently(
        self, document: str, path: tuple[str, ...]
    ) -> None:
        with pytest.raises(DocumentError):
            locate(document, path)


class TestClassify:
    """Kinds of value, and where an envelope sits so that it can be replaced."""

    @pytest.mark.parametrize(
        ("value", "kind"),
        [
            ("sha256:" + "ab" * 32, ValueKind.HASH),
            ("sha256:" + "AB" * 32, ValueKind.PLAINTEXT),
            ("sha256:4111111111111111", ValueKind.PLAINTEXT),
            ("hmac:vault:v3:" + "A" * 43 + "=", ValueKind.HMAC),
            ("hmac:x:y:4111111111111111", ValueKind.PLAINTEXT),
            ("[REDACTED]", ValueKind.REDACTED),
            ("[REDACTED", ValueKind.PLAINTEXT),
            ('{"name": "a ciphertext field"}', ValueKind.PLAINTEXT),
            ('{"ciphertext": "!!"}', ValueKind.UNPARSEABLE),
            ('{"ciphertext": "cut', ValueKind.UNPARSEABLE),
            (ENVELOPE, ValueKind.LEGACY),
            (json.dumps({"raw": ENVELOPE}), ValueKind.NESTED),
            (json.dumps([json.loads(ENVELOPE)]), ValueKind.NESTED),
            (json.dumps({"raw": ENVELOPE[:-5]}), ValueKind.NESTED),  # damaged, escaped
            ("[" * 5000 + "]" * 5000, ValueKind.NESTED),  # too deep to see into
        ],
    )
    def test_kinds(self, value: str, kind: ValueKind) -> None:
        assert classify(value).kind is kind

    @pytest.mark.parametrize(
        ("value", "kind"),
        [
            ("\ufeff" + ENVELOPE, ValueKind.UNPARSEABLE),  # a BOM
            ("\u200b" + ENVELOPE, ValueKind.UNPARSEABLE),
            ("enc:" + ENVELOPE, ValueKind.UNPARSEABLE),
            ("[1, " + ENVELOPE[:-5], ValueKind.UNPARSEABLE),  # cut off inside an array
            (ENVELOPE.replace('"ciphertext"', '"cipher\\u0074ext"') + "x", ValueKind.UNPARSEABLE),
            (ENVELOPE.upper(), ValueKind.UNPARSEABLE),
            (ENVELOPE.encode("utf-16").decode("utf-8", "replace"), ValueKind.UNPARSEABLE),
            (json.dumps({"raw": "\ufeff" + ENVELOPE}), ValueKind.NESTED),
            (
                json.dumps({"raw": ENVELOPE.replace('"ciphertext"', '"cipher\\u0074ext"')}),
                ValueKind.NESTED,
            ),
            (json.dumps({"raw": {"CipherText": "x"}}), ValueKind.NESTED),
            # The error names no part of the value (the SSN beside the damaged envelope).
            ("\ufeff" + ENVELOPE[:-1] + ', "ssn": "123-45-6789"}', ValueKind.UNPARSEABLE),
            ('{"note": "a ciphertext and a nonce"}', ValueKind.PLAINTEXT),
            # Prose that quotes a key's word names no key: someone's text, as before.
            ('Customer asked what "ciphertext" means', ValueKind.PLAINTEXT),
            ('Set the "Encryption_Version" header to 2', ValueKind.PLAINTEXT),
            ('{"msg": "field \\"ciphertext\\" missing"}', ValueKind.PLAINTEXT),
            ("ciphertext", ValueKind.PLAINTEXT),
        ],
    )
    def test_an_envelope_no_reader_takes_is_not_plaintext(
        self, value: str, kind: ValueKind
    ) -> None:
        found = classify(value)
        assert found.kind is kind
        assert (found.error is not None) is (kind is ValueKind.UNPARSEABLE)
        assert "123-45-6789" not in str(found.error)

    def test_a_json_string_is_read_on_json_columns_only(self) -> None:
        quoted = json.dumps(ENVELOPE)
        assert classify(quoted, json_column=True).kind is ValueKind.LEGACY
        assert classify(quoted).kind is ValueKind.NESTED
        assert classify('"[REDACTED]"', json_column=True).kind is ValueKind.REDACTED
        assert classify("null", json_column=True).kind is ValueKind.NULL

    def test_the_slot_keeps_the_rest_of_the_document(self) -> None:
        document = '{"a" :1,  "raw": ' + json.dumps(ENVELOPE) + "  }"
        found = classify(document, path=("raw",))
        assert found.kind is ValueKind.LEGACY
        assert found.slot is not None
        assert found.slot.put('{"new": "é"}') == '{"a" :1,  "raw": "{\\"new\\": \\"é\\"}"  }'

    @pytest.mark.parametrize(
        ("document", "kind", "elsewhere"),
        [
            (json.dumps({"raw": ENVELOPE, "copy": ENVELOPE}), ValueKind.LEGACY, True),
            (json.dumps({"other": ENVELOPE}), ValueKind.NESTED, False),
            (json.dumps({"other": 1}), ValueKind.ABSENT, False),
            (json.dumps({"raw": None}), ValueKind.NULL, False),
            (json.dumps({"raw": ENVELOPE, "copy": "\ufeff" + ENVELOPE}), ValueKind.LEGACY, True),
            (json.dumps({"raw": "\ufeff" + ENVELOPE}), ValueKind.UNPARSEABLE, False),
            (json.dumps({"raw": "4111"}), ValueKind.PLAINTEXT, False),
            # A top-level envelope where a path was named is not where it was looked for.
            (ENVELOPE, ValueKind.NESTED, False),
        ],
    )
    def test_at_a_path(self, document: str, kind: ValueKind, elsewhere: bool) -> None:
        found = classify(document, path=("raw",))
        assert (found.kind, found.nested_elsewhere) == (kind, elsewhere)
        assert found.nested is (elsewhere or kind is ValueKind.NESTED)


class TestWhatAJobReadsIsMadeAsTheConstructorsMakeIt:
    """The objects made once per value a job reads (set slot by slot, not by the frozen
    ``__init__``) equal and hash as the constructors' own."""

    @pytest.mark.parametrize("spaced", [False, True])
    @pytest.mark.parametrize("json_column", [False, True])
    def test_an_envelope_found_in_the_whole_column(self, spaced: bool, json_column: bool) -> None:
        fields = json.loads(ENVELOPE)
        text = json.dumps(fields) if spaced else json.dumps(fields, separators=(",", ":"))
        stored = json.dumps(text) if json_column else text
        found = classify(stored, json_column=json_column)
        envelope = LegacyEnvelope(
            ciphertext=base64.b64decode(fields["ciphertext"]),
            nonce=base64.b64decode(fields["nonce"]),
            key_id=fields["key_id"],
        )
        slot = Slot(stored, Span(0, len(stored)), quoted=json_column)
        expected = Classified(ValueKind.LEGACY, envelope, slot=slot)
        assert found == expected
        assert hash(found) == hash(expected)
        assert type(found.envelope) is LegacyEnvelope
        assert found.envelope == envelope
        assert hash(found.envelope) == hash(envelope)

    @pytest.mark.parametrize(
        "text",
        [
            '{"a":1}',
            '{"a": 1}  \n',
            '{"a":1} x',
            '{"a":1}{}',
            '{"a":1,"a":2}',
            '{"a":{"b":1,"b":2}}',
            "{",
            '{"a":' + "[" * 100_000,
            '{"a":' + "9" * 5000 + "}",
            ' {"a":1}',
            "[1]",
        ],
    )
    def test_the_envelope_text_reads_as_the_decoder_reads_it(self, text: str) -> None:
        expected: object
        try:
            expected = _json._DECODER.decode(text)
        except (ValueError, RecursionError, MalformedEnvelopeError):
            expected = MalformedEnvelopeError
        try:
            found: object = _json.load_object(text)
        except MalformedEnvelopeError:
            found = MalformedEnvelopeError
        if expected is not MalformedEnvelopeError and not isinstance(expected, dict):
            expected = MalformedEnvelopeError  # not an object: refused as such
        assert found == expected
