"""``heimdall-kms encrypt`` and ``heimdall-kms decrypt``."""

from __future__ import annotations

import sys

import click

import heimdall_kms
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._io import context_from_options, read_stdin_text
from heimdall_kms.envelope._json import MAX_ENVELOPE_CHARS
from heimdall_kms.service import MAX_PLAINTEXT_BYTES

__all__ = ["decrypt", "encrypt"]

_FIELD_HELP = "Field name the value belongs to; short for --context field=NAME."
_CONTEXT_HELP = "Context entry the value is bound to (repeatable), e.g. --context record=42."


@click.command()
@click.option("--field", metavar="NAME", help=_FIELD_HELP)
@click.option("--context", "pairs", multiple=True, metavar="KEY=VALUE", help=_CONTEXT_HELP)
@actor_option("encrypts")
def encrypt(field: str | None, pairs: tuple[str, ...], actor: str) -> None:
    """Encrypt the UTF-8 text on stdin; print one envelope JSON object.

    The bytes of stdin are the value, exactly: `printf %s VALUE` stores VALUE, `echo VALUE`
    stores VALUE plus a newline. In kms/hybrid mode the envelope is kms_v1, bound to the
    context, so it only decrypts where the same field/context is stated.
    """
    context = context_from_options(field, pairs)
    plaintext = read_stdin_text(MAX_PLAINTEXT_BYTES, "plaintext")
    with heimdall_kms.from_env(default_actor=actor) as crypto:
        envelope = crypto.encrypt(plaintext, context=context, actor=actor)
    click.echo(envelope.to_json())


@click.command()
@click.option("--actor", required=True, help="Who is reading the value (audited).")
@click.option("--reason", required=True, help="Why, e.g. a ticket id (audited).")
@click.option("--field", metavar="NAME", help=_FIELD_HELP)
@click.option("--context", "pairs", multiple=True, metavar="KEY=VALUE", help=_CONTEXT_HELP)
def decrypt(actor: str, reason: str, field: str | None, pairs: tuple[str, ...]) -> None:
    """Decrypt the envelope JSON on stdin; print the plaintext.

    Reads kms_v1 envelopes, and legacy env-key envelopes in legacy/hybrid mode. When --field
    or --context are given, each must match what the envelope was sealed with, or the
    decryption fails. The plaintext is printed exactly, with a newline added only on a
    terminal.
    """
    context = context_from_options(field, pairs)
    source = read_stdin_text(MAX_ENVELOPE_CHARS, "envelope").strip()
    with heimdall_kms.from_env() as crypto:
        plaintext = crypto.decrypt(
            source, actor=actor, reason=reason, context=context if context else None
        )
    sys.stdout.write(plaintext)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    sys.stdout.flush()
