"""``qoin keys``: create, inspect and use encrypted hybrid-signature keystores.

Messages signed with ``qoin keys sign`` are domain-separated (``QOIN/message/v1``) from transactions
and blocks, so signing a file can never produce a valid transaction or proof-of-work signature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from qoin.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    fail,
    print_json,
    read_input_file,
    read_password,
)
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.crypto.hashing import TAG_MESSAGE, tagged_hash
from qoin.crypto.hybrid import (
    HybridPublicKey,
    HybridSignature,
    SignatureError,
    generate_keypair,
    sign,
    verify_for_address,
)
from qoin.crypto.suites import DEFAULT_SUITE, UnknownSuite, suite_by_name
from qoin.encoding.codec import DecodeError

MAX_MESSAGE_FILE_SIZE = 64 * 1024 * 1024
MAX_SIGNATURE_FILE_SIZE = 64 * 1024
MAX_PUBKEY_FILE_SIZE = 64 * 1024

keys_app = typer.Typer(
    help="Create and use encrypted hybrid-signature keystores.", no_args_is_help=True
)

PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="Read the password from this file (first line)."),
]


def default_keystore_dir() -> Path:
    """Where ``keys new`` writes when no ``--out`` is given: ``$QOIN_HOME/keystore``."""
    return Path(os.environ.get("QOIN_HOME", Path.home() / ".qoin")) / "keystore"


def message_digest(message: bytes) -> bytes:
    """What ``keys sign`` signs: a tagged hash of the file, never raw bytes."""
    return tagged_hash(TAG_MESSAGE, message)


def _load(path: Path) -> keystore.KeystoreFile:
    try:
        return keystore.load(path)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


@keys_app.command("new")
def keys_new(
    out: Annotated[
        Path | None, typer.Option(help="Keystore file to create (must not exist).")
    ] = None,
    suite: Annotated[str, typer.Option(help="Signature suite.")] = DEFAULT_SUITE.name,
    password_file: PasswordFile = None,
    scrypt_log_n: Annotated[
        int,
        typer.Option(help="scrypt cost exponent (2^N); lower only for tests.", hidden=True),
    ] = keystore.DEFAULT_SCRYPT_LOG_N,
) -> None:
    """Generate a new key pair, write it encrypted, and print its address."""
    try:
        chosen = suite_by_name(suite)
    except UnknownSuite as exc:
        fail(str(exc), EXIT_USAGE)
    password = read_password(password_file, confirm=True)
    keypair = generate_keypair(chosen)
    path = out or default_keystore_dir() / f"{keypair.address}.json"
    try:
        keystore.save(keystore.encrypt_keypair(keypair, password, scrypt_log_n), path)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)
    typer.echo(str(keypair.address))
    typer.echo(f"keystore written to {path} (back it up: keys cannot be re-derived)", err=True)


@keys_app.command("show")
def keys_show(
    key: Annotated[Path, typer.Argument(help="Keystore file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    pubkeys_out: Annotated[
        Path | None, typer.Option(help="Also write the encoded public keys to this file.")
    ] = None,
) -> None:
    """Show a keystore's address, suite and public keys (no password needed)."""
    store = _load(key)
    if pubkeys_out is not None:
        pubkeys_out.write_bytes(store.public.encode())
    info = {
        "address": str(store.address),
        "suite": store.public.suite.name,
        "public_key_size": len(store.public.encode()),
        "public_key": store.public.encode().hex(),
    }
    if json_out:
        print_json(info)
    else:
        typer.echo(f"address: {info['address']}\nsuite:   {info['suite']}")


@keys_app.command("sign")
def keys_sign(
    key: Annotated[Path, typer.Option(help="Keystore file.")],
    message_file: Annotated[Path, typer.Option(help="File whose contents are signed.")],
    out: Annotated[Path, typer.Option(help="Where to write the signature (binary).")],
    password_file: PasswordFile = None,
) -> None:
    """Sign a file with every component of the keystore's suite."""
    store = _load(key)
    message = read_input_file(message_file, "message file", MAX_MESSAGE_FILE_SIZE)
    password = read_password(password_file, confirm=False)
    try:
        keypair = keystore.decrypt_keypair(store, password)
    except keystore.WrongPassword as exc:
        fail(str(exc), EXIT_FAILURE)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)
    out.write_bytes(sign(keypair, message_digest(message)).encode())
    typer.echo(f"signature written to {out}", err=True)


@keys_app.command("verify")
def keys_verify(
    message_file: Annotated[Path, typer.Option(help="The signed file.")],
    signature: Annotated[Path, typer.Option(help="Signature file from `qoin keys sign`.")],
    key: Annotated[Path | None, typer.Option(help="Keystore holding the public keys.")] = None,
    address: Annotated[str | None, typer.Option(help="Signer address (with --pubkeys).")] = None,
    pubkeys: Annotated[
        Path | None, typer.Option(help="Encoded public keys (from `keys show --pubkeys-out`).")
    ] = None,
) -> None:
    """Verify a signature by a keystore's keys, or by an address and its public keys."""
    if key is not None:
        store = _load(key)
        public, expected = store.public, store.address
    elif address is not None and pubkeys is not None:
        raw = read_input_file(pubkeys, "public key file", MAX_PUBKEY_FILE_SIZE)
        try:
            expected = Address.from_text(address)
            public = HybridPublicKey.decode(raw)
        except (AddressError, DecodeError) as exc:
            fail(str(exc), EXIT_USAGE)
    else:
        fail("give --key KEYSTORE, or --address ADDRESS with --pubkeys FILE", EXIT_USAGE)
    message = read_input_file(message_file, "message file", MAX_MESSAGE_FILE_SIZE)
    try:
        sig = HybridSignature.decode(
            read_input_file(signature, "signature", MAX_SIGNATURE_FILE_SIZE)
        )
        verify_for_address(expected, public, message_digest(message), sig)
    except (DecodeError, SignatureError) as exc:
        fail(f"signature INVALID: {exc}", EXIT_FAILURE)
    typer.echo(f"signature valid: signed by {expected} ({public.suite.name})")
