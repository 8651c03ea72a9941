"""``WrappedCodec``: the one reader of a provider's stored wrapped DEK, ``<provider>:v<N>:<body>``.

Every provider reads its own wrapped DEKs with it. It must answer exactly what the three steps
each provider used to write out answered: :func:`parse_wrapped`, the provider's name, and a
full match of the provider's body shape.
"""

from __future__ import annotations

import importlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_kms.kinds import ProviderName
from heimdall_kms.wrapped_key import WrappedCodec, WrappedForm, parse_wrapped

B64 = re.compile(r"[A-Za-z0-9+/=]+")
CODEC = WrappedCodec("local", B64)

# Each provider's own codec (module, SDK it needs): the shapes that are really in use.
PROVIDERS = {
    "aws": ("heimdall_kms.providers.aws.provider", "boto3"),
    "gcp": ("heimdall_kms.providers.gcp.provider", "google.cloud.kms_v1"),
    "azure": ("heimdall_kms.providers.azure.provider", "azure.keyvault.keys"),
    "local": ("heimdall_kms.providers.local.provider", None),
}


def provider_codec(name: str) -> WrappedCodec:
    module, sdk = PROVIDERS[name]
    if sdk is not None:
        pytest.importorskip(sdk)
    codec = importlib.import_module(module)._WRAPPED
    assert isinstance(codec, WrappedCodec) and codec.provider == name
    return codec


def three_steps(codec: WrappedCodec, text: str) -> WrappedForm | None:
    """What every provider wrote out before the codec (the answer it must keep)."""
    form = parse_wrapped(text)
    if form is None or form.provider != codec.provider or not codec.body.fullmatch(form.body):
        return None
    return form


class TestRead:
    @pytest.mark.parametrize(
        ("text", "version", "body"),
        [
            ("local:v1:AAAA", 1, "AAAA"),
            ("local:v12:d3JhcA==", 12, "d3JhcA=="),
            ("local:v999999999:AA", 999999999, "AA"),  # nine digits: the largest version
        ],
    )
    def test_accepted_forms_are_split(self, text: str, version: int, body: str) -> None:
        """A text of the provider's form comes back as its version and body, and is written
        back the same."""
        assert CODEC.read(text) == WrappedForm("local", version, body)
        assert CODEC.write(version, body) == text

    @pytest.mark.parametrize(
        "text", ["vault:v1:AAAA", "aws:v1:AAAA", "locall:v1:AAAA", "Local:v1:A"]
    )
    def test_another_provider_is_refused(self, text: str) -> None:
        """Another provider's name (or a longer or capitalised one) is not this provider's."""
        assert CODEC.read(text) is None

    @pytest.mark.parametrize(
        "version", ["0", "01", "1234567890", "", "-1", "1.0", "x", " 1", "\u0661"], ids=repr
    )
    def test_a_bad_version_is_refused(self, version: str) -> None:
        """v0, a leading zero, ten digits, no digits or non-ASCII digits: not a version."""
        assert CODEC.read(f"local:v{version}:AAAA") is None
        assert CODEC.read(f"local:{version}:AAAA") is None

    @pytest.mark.parametrize(
        "body", ["", "A A", "AAAA\n", " AAAA", "AA-_", "@@@@", "AAAA:"], ids=repr
    )
    def test_a_bad_body_is_refused(self, body: str) -> None:
        """Empty, white space, or a character outside the provider's shape."""
        assert CODEC.read(f"local:v1:{body}") is None

    @pytest.mark.parametrize("text", ["x:v1:A", "x:v1:", "x:v1:a b", "x:v1:a\tb", "x:v1:\n"])
    def test_a_wide_body_shape_cannot_widen_the_form(self, text: str) -> None:
        """A shape that allows anything still gets parse_wrapped's body: no white space, not
        empty."""
        codec = WrappedCodec("x", re.compile(r".*", re.DOTALL))
        assert (codec.read(text) is None) == (text != "x:v1:A")

    def test_the_provider_may_be_a_provider_name(self) -> None:
        """A ``ProviderName`` reads and writes as its plain text."""
        codec = WrappedCodec(ProviderName.VAULT, B64)
        form = codec.read("vault:v2:AAAA")
        assert form is not None and type(form.provider) is str
        assert codec.write(2, "AAAA") == "vault:v2:AAAA"

    @pytest.mark.parametrize("name", ["", "Local", "lo-cal", "a" * 17, "local:"])
    def test_a_name_the_form_cannot_hold_is_refused_when_made(self, name: str) -> None:
        """A codec that could never read its own texts back is an error at once."""
        with pytest.raises(ValueError, match="not a provider name"):
            WrappedCodec(name, B64)


class TestSameAnswerAsTheThreeSteps:
    @pytest.mark.parametrize("name", sorted(PROVIDERS))
    @pytest.mark.parametrize(
        "body",
        [
            "AAAA",
            "AA==",
            "A=A=",
            "A" * 8192,
            "A" * 8193,
            "id0:A256KW:AAAAAAAAAAAAAAAA",
            "id0:RSA-OAEP-256:AAAAAAAAAAAAAAA-_",
            "id0:A256KW:AAAA",
            "id-0:A256KW:AAAAAAAAAAAAAAAA",
            "id0:A128KW:AAAAAAAAAAAAAAAA",
            "id0:A256KW:AAAAAAAAAAAAAAAA:",
            "AA-_",
            "A A",
            "",
        ],
    )
    def test_each_provider_shape(self, name: str, body: str) -> None:
        """Each provider's own codec, on its own and the others' bodies, every version form."""
        codec = provider_codec(name)
        for provider in ("aws", "gcp", "azure", "local", "vault"):
            for version in ("1", "7", "0", "01", "999999999", "1234567890"):
                text = f"{provider}:v{version}:{body}"
                assert codec.read(text) == three_steps(codec, text), text

    @given(st.text(alphabet="ablocv019:A=+/-_ \n", max_size=24))
    def test_any_text(self, text: str) -> None:
        """Whatever the text, the codec and the three steps agree."""
        for candidate in (text, f"local:v1:{text}", f"local:{text}"):
            assert CODEC.read(candidate) == three_steps(CODEC, candidate)

    @given(st.text(max_size=24))
    def test_any_text_with_an_open_shape(self, text: str) -> None:
        """Agreement holds for a shape that allows any character too."""
        codec = WrappedCodec("local", re.compile(r".+", re.DOTALL))
        for candidate in (text, f"local:v1:{text}"):
            assert codec.read(candidate) == three_steps(codec, candidate)


def test_repr_names_no_body() -> None:
    """What a codec reads is split without its body in the repr (a wrapped DEK is not logged)."""
    form = CODEC.read("local:v3:c2VjcmV0LWtleQ==")
    assert form is not None and "c2VjcmV0" not in repr(form)
