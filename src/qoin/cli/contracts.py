"""``qoin contract``, ``qoin logs`` and ``qoin names``: deploy and call contracts, read their events,
and hold names, through an execution client's user RPC (``--rpc URL``, default
``http://127.0.0.1:8645/``).

Commands::

    qoin contract deploy FILE.wasm --key KEYSTORE [--arg A ...] [--value N] [--gas N]
                         [--fee-per-gas N] [--timeout S] [--no-wait] [--json]
        Deploy a WebAssembly module (its ``init`` export, if any, gets the arguments); prints the
        contract's address and the transaction id, then waits for the receipt.
    qoin contract call ADDRESS METHOD [ARGS...] --key KEYSTORE [--value N] [--gas N]
                       [--fee-per-gas N] [--timeout S] [--no-wait] [--json]
        Sign and submit a call, wait for its receipt (at most ``--timeout`` seconds, default 120)
        and print its status, gas used, fee, return value (decoded when it is one ABI value) and
        events. A call that does not succeed prints its reason and exits 1.
    qoin contract query ADDRESS METHOD [ARGS...] [--from ADDRESS] [--value N] [--json]
        Run a read-only call on the head state (``qoin_call``: no transaction, no fee) and print
        the return value.
    qoin contract receipt TXID [--json]
        Print a transaction's receipt (exit 1 while it is not in the chain).
    qoin logs [--from H] [--to H] [--address A ...] [--topic T ...] [--follow] [--json]
        Print the events of a block range (default: the last 10,000 blocks, the most one query
        spans). ``--follow`` prints each new one as it comes (over the WebSocket subscription,
        after the past ones when ``--from`` is given) until Ctrl-C or SIGTERM (exit 0); those a
        reorganisation took out of the chain come again marked ``removed``. ``--address`` may be
        repeated (any of them); each ``--topic`` is the next topic position: 32 bytes of hex,
        ``sha3:NAME`` (SHA3-256 of NAME: an event's name in topic 0), ``any``, or ``a,b``
        alternatives.
    qoin names register NAME --value HEX32 --blocks N --key KEYSTORE
    qoin names renew NAME --blocks N --key KEYSTORE
    qoin names transfer NAME NEW_OWNER --key KEYSTORE
    qoin names set-value NAME --value HEX32 --key KEYSTORE
    qoin names resolve NAME
        The ``names`` actor (:mod:`qoin.actors.names`): a term of N blocks costs 10 x N Shor,
        paid as the call's value.

Arguments (:func:`parse_arg`): an integer is a ``uint``; ``qoin1...`` an address; ``0x...`` bytes;
``true``/``false`` a bool; ``str:TEXT`` a string, and any other text is a string too. A prefix
forces a type: ``u64:`` (or ``uint:``), ``addr:``, ``hex:`` (or ``bytes:``), ``bool:``, ``str:``.
Text that looks like a number but is no uint (``-1``, ``1.5``, ``1e9``) is refused, not taken as a
string. Return values and event data that decode as one ABI value are shown decoded:
``12``, ``0xab``, ``"text"``, ``qoin1...``, ``true``, ``[a, b]``.

Gas: by default ``qoin_estimateGas`` x 1.2 plus :data:`GAS_MARGIN`, at most the block gas limit; a
call the estimate says would not succeed is not sent (exit 1, with its reason). The fee per gas is
``qoin_estimateFee``'s unless ``--fee-per-gas`` names one. The keystore's password comes from
``--password-file``, else ``$QOIN_PASSWORD``, else a prompt.

Output: a transaction prints ``contract: ADDRESS`` (deployments) and ``tx: ID`` at once, then
``block: HEIGHT HASH``, ``status: success|reverted|outOfGas|failed``, ``reason: ...`` (if any),
``gas used: N``, ``fee: N Shor``, ``return: VALUE`` (if any), ``events: N`` and ``event I: EMITTER
topics T1,T2 data 0xDATA (DECODED)`` lines; a query prints the return value alone; a log is one
line ``[removed ]block H tx ID log I: EMITTER topics ... data ...``. ``--json``: one JSON document
(the receipt or ``qoin_call`` answer with ``returnValue`` and each event's ``decoded`` added; the
list of logs), and ``logs --follow --json`` one JSON object per line. Exit codes as in the rest of the CLI: 0 success, 1 a "no" (a call that reverted,
ran out of gas or failed, an unreachable node, no receipt in time), 2 unusable input (a bad
address or argument, a missing or oversize file). Errors are one line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import MAX_TERM, MIN_TERM, VALUE_SIZE, name_problem, term_fee
from qoin.chain.transaction import DEPLOY_ADDRESS, sign_call
from qoin.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ask_node,
    fail,
    print_json,
    read_input_file,
    read_password,
)
from qoin.cli.execution import DEFAULT_RPC
from qoin.crypto import keystore
from qoin.crypto.address import Address, AddressError
from qoin.encoding.codec import DecodeError
from qoin.errors import QoinError
from qoin.execution.abi import (
    MAX_ARGS,
    MAX_CODE_SIZE,
    MAX_VALUE_BYTES,
    AbiError,
    Value,
    decode_value,
    encode_call,
    encode_deploy,
)
from qoin.execution.account import contract_address
from qoin.execution.events import MAX_LOG_RANGE
from qoin.execution.gas import DEFAULT_BLOCK_GAS_LIMIT
from qoin.execution.receipt import MAX_TOPICS, TOPIC_SIZE
from qoin.process import stop_on_signals
from qoin.rpc.client import RpcCallError, RpcTimeout, Subscription, call, subscribe

DEFAULT_TIMEOUT_S = 120.0
"""How long ``contract call`` (and the other transactions) wait for a receipt by default."""
RECEIPT_POLL_S = 0.25
"""How often the receipt is asked for while waiting."""
FOLLOW_POLL_S = 0.5
"""How often ``logs --follow`` looks whether Ctrl-C was pressed while no log comes."""
GAS_FACTOR = 1.2
"""The estimate is multiplied by this (the state may change before the call is mined)..."""
GAS_MARGIN = 10_000
"""...and this is added."""
MAX_UINT = 2**64 - 1
"""The largest ``uint`` value."""
MAX_ARG_TEXT = 2 * MAX_VALUE_BYTES + 16
"""The longest argument text (a hex byte string of the largest value and its prefix)."""
WASM_MAGIC = b"\0asm"
"""The first four bytes of every WebAssembly module."""
SERVER_ERROR = -32000
"""The JSON-RPC error code of ``qoin_estimateGas`` for a call that would not succeed."""

ARG_HELP = (
    "Arguments: an integer is a uint; qoin1... an address; 0x... bytes; true/false a bool; "
    "str:TEXT (or any other text) a string. Prefixes force a type: u64: (uint:), addr:, "
    "hex: (bytes:), bool:, str:."
)

RpcUrl = Annotated[str, typer.Option("--rpc", help="The execution client's user RPC URL.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
KeyOption = Annotated[Path, typer.Option("--key", help="Sender keystore.")]
PasswordFile = Annotated[Path | None, typer.Option(help="Keystore password file.")]
GasOption = Annotated[
    int | None,
    typer.Option("--gas", help="Gas limit (default: the estimate x 1.2 + a margin).", min=1),
]
FeeOption = Annotated[
    int | None,
    typer.Option("--fee-per-gas", help="Shor per gas (default: qoin_estimateFee's).", min=0),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", help="Seconds to wait for the receipt.", min=0.1, max=86_400),
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Print the transaction id and return at once.")
]


class ArgError(QoinError, ValueError):
    """A command-line argument that is not a valid ABI value; the message says why."""


# -- arguments and values --------------------------------------------------------------------------


def _uint(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ArgError(f"{text[:40]!r} is not an unsigned integer")
    if len(text) > 20 or int(text) > MAX_UINT:
        raise ArgError(f"{text[:40]!r} is larger than the largest uint {MAX_UINT}")
    return int(text)


def _hex(text: str) -> bytes:
    digits = text.removeprefix("0x")
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise ArgError(f"{text[:40]!r} is not hex bytes (an even number of 0-9a-f)") from None
    if len(data) > MAX_VALUE_BYTES:
        raise ArgError(f"a bytes value is at most {MAX_VALUE_BYTES} bytes, got {len(data)}")
    return data


def _address(text: str) -> Address:
    try:
        return Address.from_text(text)
    except AddressError as exc:
        raise ArgError(f"{exc} (write str:{text[:20]}... for a string)") from None


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ArgError(f"a bool is true or false, not {text[:40]!r}")
    return text == "true"


def _string(text: str) -> str:
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise ArgError(f"a string value is at most {MAX_VALUE_BYTES} bytes")
    return text


_NUMBER_LIKE = re.compile(r"[+-]?[0-9][0-9_.,eE+-]*")
"""Text a person means as a number, which is no uint (``-1``, ``1.5``, ``1e9``): refused rather
than taken as a string."""
_PREFIXES: dict[str, Callable[[str], Value]] = {
    "u64:": _uint,
    "uint:": _uint,
    "addr:": _address,
    "hex:": _hex,
    "bytes:": _hex,
    "bool:": _bool,
    "str:": _string,
}


def parse_arg(text: str) -> Value:
    """One command-line argument as an ABI value (the syntax is the module docstring's);
    :class:`ArgError` says what is wrong."""
    if len(text) > MAX_ARG_TEXT:
        raise ArgError(f"an argument is at most {MAX_ARG_TEXT} characters")
    for prefix, parse in _PREFIXES.items():
        if text.startswith(prefix):
            return parse(text.removeprefix(prefix))
    if text in ("true", "false"):
        return text == "true"
    if text.isascii() and text.isdigit():
        return _uint(text)
    if _NUMBER_LIKE.fullmatch(text):
        raise ArgError(f"{text[:40]!r} is not an unsigned integer (write str:{text[:40]} for text)")
    if text.startswith("0x"):
        return _hex(text)
    if text.startswith("qoin1"):
        return _address(text)
    return _string(text)


def parse_args(texts: Sequence[str]) -> tuple[Value, ...]:
    """Command-line arguments as ABI values (at most :data:`MAX_ARGS`)."""
    if len(texts) > MAX_ARGS:
        raise ArgError(f"at most {MAX_ARGS} arguments, got {len(texts)}")
    return tuple(parse_arg(text) for text in texts)


def show_value(value: Value) -> str:
    """A value as a person reads it: ``12``, ``0xab``, ``"text"``, ``qoin1...``, ``true``,
    ``[a, b]``; each form parses back (:func:`parse_arg`) except strings and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, Address):
        return str(value)
    return "[" + ", ".join(show_value(item) for item in value) + "]"


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped) + '"'


def value_json(value: Value) -> Any:
    """A value in JSON: a number, ``"0x..."`` for bytes, a string, ``"qoin1..."``, a bool, a
    list."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Address):
        return str(value)
    return [value_json(item) for item in value]


def decode_one(data: bytes) -> Value | None:
    """``data`` decoded as exactly one ABI value, or None if it is not one (empty included)."""
    if not data:
        return None
    try:
        return decode_value(data)
    except DecodeError:
        return None


def _hex_field(text: Any) -> bytes:
    """A hex field of an RPC answer (empty if it is missing or malformed)."""
    if not isinstance(text, str):
        return b""
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return b""


# -- RPC -------------------------------------------------------------------------------------------


def _answer_int(answer: Any, name: str, method: str) -> int:
    """The integer field ``name`` of an RPC answer (``""``: the answer itself); exit 1 if the node
    answered something else."""
    found = answer if name == "" else answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        fail(f"{method} answered {str(answer)[:200]!r}: no {name or 'integer'}", EXIT_FAILURE)
    return found


def _parsed_address(text: str, what: str) -> Address:
    try:
        return Address.from_text(text)
    except AddressError as exc:
        fail(f"{what}: {exc}", EXIT_USAGE)


def _parsed_args(texts: Sequence[str] | None) -> tuple[Value, ...]:
    try:
        return parse_args(texts or ())
    except ArgError as exc:
        fail(f"bad argument: {exc}", EXIT_USAGE)


def _call_data(method: str, values: Sequence[Value]) -> bytes:
    try:
        return encode_call(method, values)
    except AbiError as exc:
        fail(str(exc), EXIT_USAGE)


def _load_keystore(path: Path) -> keystore.KeystoreFile:
    try:
        return keystore.load(path)
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_USAGE)


def _read_module(path: Path) -> bytes:
    code = read_input_file(path, "WebAssembly module", MAX_CODE_SIZE)
    if not code.startswith(WASM_MAGIC):
        fail(f"{path} is not a WebAssembly module (it does not start with \\0asm)", EXIT_USAGE)
    return code


def _request(sender: Address, to: Address, value: int, data: bytes) -> dict[str, Any]:
    """A ``qoin_call`` / ``qoin_estimateGas`` request (no ``to``: a deployment)."""
    request: dict[str, Any] = {"from": str(sender), "value": value, "data": data.hex()}
    if to != DEPLOY_ADDRESS:
        request["to"] = str(to)
    return request


def _not_succeeded(answer: dict[str, Any], note: str = "") -> NoReturn:
    """Exit 1: the call (a receipt or a simulation) did not succeed; say why."""
    reason = answer.get("reason") or "no reason given"
    fail(f"the call {_status_words(answer.get('status'))}: {reason}{note}", EXIT_FAILURE)


def _status_words(status: Any) -> str:
    return {
        "reverted": "reverted",
        "outOfGas": "ran out of gas",
        "failed": "failed",
    }.get(str(status), f"ended with status {status}")


def choose_gas(estimate: int, block_limit: int) -> int:
    """The gas limit for a call the node estimates at ``estimate``: x :data:`GAS_FACTOR` plus
    :data:`GAS_MARGIN`, at most ``block_limit`` (and never below the estimate)."""
    return max(estimate, min(math.ceil(estimate * GAS_FACTOR) + GAS_MARGIN, block_limit))


def _estimate_gas(url: str, request: dict[str, Any]) -> int:
    try:
        answer = call(url, "qoin_estimateGas", request)
    except RpcCallError as exc:
        if exc.code == SERVER_ERROR and isinstance(exc.data, dict) and "status" in exc.data:
            _not_succeeded(exc.data, " (nothing was sent)")
        if exc.code is None:
            fail(f"cannot reach the execution client at {url}: {exc}", EXIT_FAILURE)
        fail(str(exc), EXIT_FAILURE)
    estimate = _answer_int(answer, "gas", "qoin_estimateGas")
    # The node may tell its block gas limit; the default genesis value otherwise.
    limit = (
        _answer_int(answer, "blockGasLimit", "qoin_estimateGas")
        if "blockGasLimit" in answer
        else DEFAULT_BLOCK_GAS_LIMIT
    )
    return choose_gas(estimate, limit)


def _transact(
    url: str,
    key: Path,
    password_file: Path | None,
    to: Address,
    value: int,
    data: bytes,
    gas: int | None,
    fee_per_gas: int | None,
) -> tuple[str, Address, int]:
    """Sign and submit a call transaction (a deployment when ``to`` is :data:`DEPLOY_ADDRESS`);
    returns its id, the sender and the nonce it used."""
    store = _load_keystore(key)
    chain_id = _answer_int(ask_node(url, "qoin_chainId"), "", "qoin_chainId")
    account = ask_node(url, "qoin_getAccount", str(store.address))
    nonce = _answer_int(account, "nextNonce", "qoin_getAccount")
    limit = gas if gas is not None else _estimate_gas(url, _request(store.address, to, value, data))
    rate = (
        fee_per_gas
        if fee_per_gas is not None
        else _answer_int(ask_node(url, "qoin_estimateFee", limit), "feePerGas", "qoin_estimateFee")
    )
    try:
        keypair = keystore.decrypt_keypair(store, read_password(password_file, confirm=False))
    except keystore.KeystoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    tx = sign_call(
        keypair,
        chain_id=chain_id,
        nonce=nonce,
        to=to,
        data=data,
        gas_limit=limit,
        fee_per_gas=rate,
        value=value,
        reveal_keys=account.get("publicKeysRevealed") is not True,
    )
    tx_id = ask_node(url, "qoin_sendRawTransaction", tx.encode().hex())
    return str(tx_id), store.address, nonce


def _status(quiet: bool, message: str) -> AbstractContextManager[Any]:
    """A spinner on stderr (none when ``quiet`` or stderr is not a terminal)."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return nullcontext()
    return console.status(message)


def wait_for_receipt(url: str, tx_id: str, timeout: float, quiet: bool) -> dict[str, Any]:
    """Ask for ``tx_id``'s receipt until it comes; exit 1 after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with _status(quiet, f"waiting for {tx_id[:16]}... to be mined"):
        while True:
            receipt = ask_node(url, "qoin_getTransactionReceipt", tx_id)
            if receipt is not None:
                return dict(receipt)
            if time.monotonic() > deadline:
                fail(
                    f"no receipt for {tx_id} after {timeout:g} s; it may still be mined: "
                    f"qoin contract receipt {tx_id}",
                    EXIT_FAILURE,
                )
            time.sleep(RECEIPT_POLL_S)


def _with_values(answer: dict[str, Any]) -> dict[str, Any]:
    """An RPC answer (receipt or ``qoin_call``) with ``returnValue`` added (the decoded return
    value, or null) and each event's ``decoded`` data (or null)."""
    decoded = decode_one(_hex_field(answer.get("returnData")))
    events = [
        {**event, "decoded": _decoded_json(event.get("data"))}
        for event in answer.get("events") or []
        if isinstance(event, dict)
    ]
    return {
        **answer,
        "returnValue": None if decoded is None else value_json(decoded),
        "events": events,
    }


def _decoded_json(data: Any) -> Any:
    decoded = decode_one(_hex_field(data))
    return None if decoded is None else value_json(decoded)


def show_event(event: dict[str, Any]) -> str:
    """One event (of a receipt, a call or a log) on one line: emitter, topics, data (and the data
    decoded when it is one ABI value)."""
    topics = ",".join(str(topic) for topic in event.get("topics") or []) or "-"
    raw = _hex_field(event.get("data"))
    decoded = decode_one(raw)
    shown = f" ({show_value(decoded)})" if decoded is not None else ""
    return f"{event.get('address')} topics {topics} data 0x{raw.hex()}{shown}"


def _print_outcome(answer: dict[str, Any], identity: bool = True) -> None:
    """The human form of a receipt or a ``qoin_call`` answer (``identity``: with the transaction
    id and the contract a deployment created, which a sender printed already)."""
    lines = []
    if identity and answer.get("transactionHash"):
        lines.append(f"tx: {answer['transactionHash']}")
    if identity and answer.get("contractAddress"):
        lines.append(f"contract: {answer['contractAddress']}")
    if answer.get("blockHeight") is not None:
        lines.append(f"block: {answer['blockHeight']} {answer.get('blockHash', '')}".rstrip())
    lines.append(f"status: {answer.get('status')}")
    if answer.get("reason"):
        lines.append(f"reason: {answer['reason']}")
    lines.append(f"gas used: {answer.get('gasUsed')}")
    if answer.get("fee") is not None:
        lines.append(f"fee: {answer['fee']} Shor")
    raw = _hex_field(answer.get("returnData"))
    if raw and not answer.get("contractAddress"):  # a deployment returns the contract's address
        decoded = decode_one(raw)
        lines.append(f"return: {show_value(decoded) if decoded is not None else '0x' + raw.hex()}")
    events = [event for event in answer.get("events") or [] if isinstance(event, dict)]
    lines.append(f"events: {len(events)}")
    lines.extend(f"event {index}: {show_event(event)}" for index, event in enumerate(events))
    typer.echo("\n".join(lines))


def _finish(
    url: str,
    tx_id: str,
    *,
    timeout: float,
    json_out: bool,
    wait: bool,
    contract: Address | None = None,
) -> dict[str, Any] | None:
    """After a transaction is sent: print its id (and the ``contract`` a deployment creates) at
    once, then, unless told not to ``wait``, wait for its receipt and print it; exit 1 if it did
    not succeed. The receipt, if waited for."""
    if not json_out:
        if contract is not None:
            typer.echo(f"contract: {contract}")
        typer.echo(f"tx: {tx_id}")
    if not wait:
        if json_out:
            created = {} if contract is None else {"contractAddress": str(contract)}
            print_json({"transactionHash": tx_id, **created})
        return None
    receipt = _with_values(wait_for_receipt(url, tx_id, timeout, quiet=json_out))
    if json_out:
        print_json(receipt)
    else:
        _print_outcome(receipt, identity=False)
    if receipt.get("status") != "success":
        _not_succeeded(receipt)
    return receipt


# -- qoin contract ---------------------------------------------------------------------------------

contract_app = typer.Typer(
    help="Deploy, call and query contracts.", epilog=ARG_HELP, no_args_is_help=True
)


@contract_app.command("deploy", epilog=ARG_HELP)
def contract_deploy(
    module: Annotated[Path, typer.Argument(help="The WebAssembly module (.wasm).")],
    key: KeyOption,
    args: Annotated[
        list[str] | None,
        typer.Option("--arg", "--args", help="An argument of the module's init (repeat)."),
    ] = None,
    value: Annotated[int, typer.Option(help="Shor moved to the new contract.", min=0)] = 0,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    no_wait: NoWait = False,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Deploy a module; print the contract's address and the transaction id, then the receipt."""
    code = _read_module(module)
    try:
        data = encode_deploy(code, _parsed_args(args))
    except AbiError as exc:
        fail(str(exc), EXIT_USAGE)
    tx_id, sender, nonce = _transact(
        rpc, key, password_file, DEPLOY_ADDRESS, value, data, gas, fee_per_gas
    )
    created = contract_address(sender, nonce)
    _finish(rpc, tx_id, timeout=timeout, json_out=json_out, wait=not no_wait, contract=created)


@contract_app.command("call", epilog=ARG_HELP)
def contract_call(
    address: Annotated[str, typer.Argument(help="The contract or actor (qoin1...).")],
    method: Annotated[str, typer.Argument(help="The method.")],
    key: KeyOption,
    args: Annotated[list[str] | None, typer.Argument(help="Its arguments.")] = None,
    value: Annotated[int, typer.Option(help="Shor moved with the call.", min=0)] = 0,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    no_wait: NoWait = False,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Call METHOD of ADDRESS in a transaction; print status, gas, return value and events."""
    to = _parsed_address(address, "contract address")
    data = _call_data(method, _parsed_args(args))
    tx_id, _, _ = _transact(rpc, key, password_file, to, value, data, gas, fee_per_gas)
    _finish(rpc, tx_id, timeout=timeout, json_out=json_out, wait=not no_wait)


def _query(url: str, sender: Address, to: Address, value: int, data: bytes) -> dict[str, Any]:
    """``qoin_call``; exit 1 with the reason if the call does not succeed."""
    answer = ask_node(url, "qoin_call", _request(sender, to, value, data))
    if answer.get("status") != "success":
        _not_succeeded(answer)
    return _with_values(dict(answer))


@contract_app.command("query", epilog=ARG_HELP)
def contract_query(
    address: Annotated[str, typer.Argument(help="The contract or actor (qoin1...).")],
    method: Annotated[str, typer.Argument(help="The method.")],
    args: Annotated[list[str] | None, typer.Argument(help="Its arguments.")] = None,
    sender: Annotated[
        str | None, typer.Option("--from", help="The caller (default: the zero address).")
    ] = None,
    value: Annotated[int, typer.Option(help="Shor the call moves (simulated).", min=0)] = 0,
    rpc: RpcUrl = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """Call METHOD of ADDRESS on the head state without a transaction (nothing is kept)."""
    to = _parsed_address(address, "contract address")
    caller = DEPLOY_ADDRESS if sender is None else _parsed_address(sender, "--from")
    data = _call_data(method, _parsed_args(args))
    answer = _query(rpc, caller, to, value, data)
    if json_out:
        print_json(answer)
        return
    raw = _hex_field(answer.get("returnData"))
    decoded = decode_one(raw)
    typer.echo(show_value(decoded) if decoded is not None else "0x" + raw.hex())


@contract_app.command("receipt")
def contract_receipt(
    tx_id: Annotated[str, typer.Argument(help="The transaction id (hex).")],
    rpc: RpcUrl = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """Print a transaction's receipt; exit 1 while it is not in the chain."""
    if len(tx_id.removeprefix("0x")) != 64 or len(_hex_field(tx_id)) != 32:
        fail(f"a transaction id is 32 bytes of hex, not {tx_id[:80]!r}", EXIT_USAGE)
    receipt = ask_node(rpc, "qoin_getTransactionReceipt", tx_id.removeprefix("0x"))
    if receipt is None:
        fail(f"no receipt for {tx_id}: not in the chain (yet)", EXIT_FAILURE)
    shown = _with_values(dict(receipt))
    if json_out:
        print_json(shown)
    else:
        _print_outcome(shown)


# -- qoin logs -------------------------------------------------------------------------------------


def parse_topic(text: str) -> list[str] | None:
    """One ``--topic`` position: ``any`` or ``*`` matches any topic; otherwise comma-separated
    alternatives, each 32 bytes of hex (``0x`` optional) or ``sha3:TEXT`` (SHA3-256 of TEXT, how
    events name themselves in topic 0). The JSON filter's form: None or a list of hex."""
    if text in ("any", "*"):
        return None
    alternatives = []
    for item in text.split(","):
        if item.startswith("sha3:"):
            alternatives.append(hashlib.sha3_256(item.removeprefix("sha3:").encode()).hexdigest())
            continue
        try:
            topic = bytes.fromhex(item.removeprefix("0x"))
        except ValueError:
            topic = b""
        if len(topic) != TOPIC_SIZE:
            raise ArgError(
                f"a topic is {TOPIC_SIZE} bytes of hex, sha3:TEXT or any, not {item[:80]!r}"
            )
        alternatives.append(topic.hex())
    return alternatives


def log_filter(addresses: Sequence[str], topics: Sequence[str]) -> dict[str, Any]:
    """The ``address`` and ``topics`` of a JSON log filter from the command line's
    ``--address`` and ``--topic`` options; :class:`ArgError` if one is malformed."""
    if len(topics) > MAX_TOPICS:
        raise ArgError(f"at most {MAX_TOPICS} --topic positions, got {len(topics)}")
    found: dict[str, Any] = {}
    if addresses:
        try:
            found["address"] = [str(Address.from_text(text)) for text in addresses]
        except AddressError as exc:
            raise ArgError(str(exc)) from None
    if topics:
        found["topics"] = [parse_topic(text) for text in topics]
    return found


def show_log(log: dict[str, Any]) -> str:
    """One log on one line: where it is, then the event (``removed`` first when a reorganisation
    took its block out of the chain)."""
    removed = "removed " if log.get("removed") else ""
    return (
        f"{removed}block {log.get('blockNumber')} tx {log.get('transactionHash')} "
        f"log {log.get('logIndex')}: {show_event(log)}"
    )


def _print_log(log: Any, json_out: bool) -> None:
    if not isinstance(log, dict):
        return
    if json_out:
        typer.echo(json.dumps(log, separators=(",", ":")))
    else:
        typer.echo(show_log(log))


def _range(url: str, start: int | None, end: int | None) -> tuple[int, int]:
    """The block range of a query: the options, else the last :data:`MAX_LOG_RANGE` blocks."""
    if end is None:
        end = int(ask_node(url, "qoin_blockNumber"))
        if start is not None and start > end:
            end = start  # nothing yet: an empty answer, not an error
    if start is None:
        start = max(0, end - MAX_LOG_RANGE + 1)
    if start > end:
        fail(f"--from {start} is after --to {end}", EXIT_USAGE)
    return start, end


def _stream(
    subscription: Subscription, stop: threading.Event, json_out: bool, seen: set[tuple[Any, ...]]
) -> None:
    """Print each log the subscription brings until ``stop`` is set (``seen``: logs printed
    already, not printed again)."""
    while not stop.is_set():
        try:
            log = subscription.next(FOLLOW_POLL_S)
        except RpcTimeout:
            continue
        except RpcCallError as exc:
            fail(str(exc), EXIT_FAILURE)
        if isinstance(log, dict) and not log.get("removed") and _identity(log) in seen:
            continue
        _print_log(log, json_out)


def _identity(log: dict[str, Any]) -> tuple[Any, ...]:
    return (log.get("blockHash"), log.get("logIndex"))


def _subscription(url: str, live: dict[str, Any]) -> Subscription:
    try:
        return subscribe(url, "logs", live)
    except RpcCallError as exc:
        if exc.code is None:
            fail(f"cannot subscribe at {url}: {exc}", EXIT_FAILURE)
        fail(str(exc), EXIT_FAILURE)


def _query_logs(url: str, start: int | None, end: int | None, live: dict[str, Any]) -> list[Any]:
    first, last = _range(url, start, end)
    found = ask_node(url, "qoin_getLogs", {"fromBlock": first, "toBlock": last, **live})
    if not isinstance(found, list):
        fail(f"qoin_getLogs at {url} answered no list of logs", EXIT_FAILURE)
    return found


def logs(
    start: Annotated[
        int | None, typer.Option("--from", help="First block (default: 10,000 back).", min=0)
    ] = None,
    end: Annotated[
        int | None, typer.Option("--to", help="Last block (default: the head).", min=0)
    ] = None,
    address: Annotated[
        list[str] | None, typer.Option("--address", help="Emitter to match (repeat: any of).")
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            help="Topic at the next position: 32-byte hex, sha3:NAME, 'any', or a,b alternatives.",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Print new logs as they come, until Ctrl-C (after the --from range if given).",
        ),
    ] = False,
    rpc: RpcUrl = DEFAULT_RPC,
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON: one list; with --follow one object a line.")
    ] = False,
) -> None:
    """Print the events of a block range, or follow new ones until Ctrl-C."""
    try:
        live = log_filter(address or [], topic or [])
    except ArgError as exc:
        fail(f"bad filter: {exc}", EXIT_USAGE)
    if not follow:
        found = _query_logs(rpc, start, end, live)
        if json_out:
            print_json(found)
        else:
            for log in found:
                _print_log(log, json_out)
        return
    if end is not None:
        fail("--follow prints new logs as they come: it takes no --to", EXIT_USAGE)
    stop = threading.Event()
    # Subscribe before the query of past logs, so that no log falls between the two.
    with stop_on_signals(stop.set), _subscription(rpc, live) as subscription:
        seen: set[tuple[Any, ...]] = set()
        if start is not None:
            for log in _query_logs(rpc, start, None, live):
                _print_log(log, json_out)
                if isinstance(log, dict):
                    seen.add(_identity(log))
        _stream(subscription, stop, json_out, seen)


# -- qoin names ------------------------------------------------------------------------------------

names_app = typer.Typer(
    help=f"Names that resolve to 32 bytes (the names actor, {NAMES_ADDRESS}).",
    no_args_is_help=True,
)

BlocksOption = Annotated[
    int,
    typer.Option(
        "--blocks", help=f"Term in blocks ({MIN_TERM} to {MAX_TERM}; 10 Shor each).", min=1
    ),
]
ValueOption = Annotated[
    str, typer.Option("--value", help="What the name resolves to: 32 bytes of hex.")
]


def _checked_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        fail(f"name {name[:80]!r}: {problem}", EXIT_USAGE)
    return name


def _name_value(text: str) -> bytes:
    try:
        value = _hex(text)
    except ArgError as exc:
        fail(f"--value: {exc}", EXIT_USAGE)
    if len(value) != VALUE_SIZE:
        fail(f"--value is {VALUE_SIZE} bytes of hex, got {len(value)} bytes", EXIT_USAGE)
    return value


def _checked_term(blocks: int) -> int:
    if not MIN_TERM <= blocks <= MAX_TERM:
        fail(f"--blocks is {MIN_TERM} to {MAX_TERM}, got {blocks}", EXIT_USAGE)
    return blocks


def _names_call(
    url: str,
    key: Path,
    password_file: Path | None,
    method: str,
    values: Sequence[Value],
    paid: int,
    options: tuple[int | None, int | None, float, bool],
) -> dict[str, Any] | None:
    gas, fee_per_gas, timeout, json_out = options
    data = _call_data(method, values)
    tx_id, _, _ = _transact(url, key, password_file, NAMES_ADDRESS, paid, data, gas, fee_per_gas)
    return _finish(url, tx_id, timeout=timeout, json_out=json_out, wait=True)


@names_app.command("register")
def names_register(
    name: Annotated[str, typer.Argument(help="3 to 63 of a-z, 0-9 and '-'.")],
    value: ValueOption,
    blocks: BlocksOption,
    key: KeyOption,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Register a free name for BLOCKS blocks (10 Shor a block), resolving to VALUE."""
    values = (_checked_name(name), _name_value(value), _checked_term(blocks))
    receipt = _names_call(
        rpc,
        key,
        password_file,
        "register",
        values,
        term_fee(blocks),
        (gas, fee_per_gas, timeout, json_out),
    )
    if receipt is not None and not json_out:
        typer.echo(f"registered {name} until height {receipt.get('returnValue')}")


@names_app.command("renew")
def names_renew(
    name: Annotated[str, typer.Argument(help="A held name.")],
    blocks: BlocksOption,
    key: KeyOption,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Extend a held name by BLOCKS blocks (anyone may pay; 10 Shor a block)."""
    values = (_checked_name(name), _checked_term(blocks))
    receipt = _names_call(
        rpc,
        key,
        password_file,
        "renew",
        values,
        term_fee(blocks),
        (gas, fee_per_gas, timeout, json_out),
    )
    if receipt is not None and not json_out:
        typer.echo(f"renewed {name} until height {receipt.get('returnValue')}")


@names_app.command("transfer")
def names_transfer(
    name: Annotated[str, typer.Argument(help="A name the key owns.")],
    new_owner: Annotated[str, typer.Argument(help="The new owner (qoin1...).")],
    key: KeyOption,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Give a name the key owns to NEW_OWNER."""
    values = (_checked_name(name), _parsed_address(new_owner, "new owner"))
    receipt = _names_call(
        rpc, key, password_file, "transfer", values, 0, (gas, fee_per_gas, timeout, json_out)
    )
    if receipt is not None and not json_out:
        typer.echo(f"transferred {name} to {new_owner}")


@names_app.command("set-value")
def names_set_value(
    name: Annotated[str, typer.Argument(help="A name the key owns.")],
    value: ValueOption,
    key: KeyOption,
    gas: GasOption = None,
    fee_per_gas: FeeOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    rpc: RpcUrl = DEFAULT_RPC,
    password_file: PasswordFile = None,
    json_out: JsonOut = False,
) -> None:
    """Set what a name the key owns resolves to."""
    values = (_checked_name(name), _name_value(value))
    receipt = _names_call(
        rpc, key, password_file, "set_value", values, 0, (gas, fee_per_gas, timeout, json_out)
    )
    if receipt is not None and not json_out:
        typer.echo(f"{name} now resolves to {value}")


@names_app.command("resolve")
def names_resolve(
    name: Annotated[str, typer.Argument(help="The name.")],
    rpc: RpcUrl = DEFAULT_RPC,
    json_out: JsonOut = False,
) -> None:
    """Print a held name's owner, value and expiry height (exit 1 if it is free)."""
    data = _call_data("resolve", (_checked_name(name),))
    answer = _query(rpc, DEPLOY_ADDRESS, NAMES_ADDRESS, 0, data)
    record = decode_one(_hex_field(answer.get("returnData")))
    if not isinstance(record, tuple) or len(record) != 3:
        fail(f"the names actor answered {answer.get('returnData')!r}, not a record", EXIT_FAILURE)
    owner, value, expiry = record
    if not (isinstance(owner, Address) and isinstance(value, bytes) and isinstance(expiry, int)):
        fail(f"the names actor answered {show_value(record)}, not a record", EXIT_FAILURE)
    if json_out:
        print_json(
            {"name": name, "owner": str(owner), "value": "0x" + value.hex(), "expiry": expiry}
        )
    else:
        typer.echo(f"owner: {owner}\nvalue: 0x{value.hex()}\nexpiry: {expiry}")


def register(app: typer.Typer) -> None:
    """Add ``contract``, ``logs`` and ``names`` to the ``qoin`` command."""
    app.add_typer(contract_app, name="contract")
    app.command("logs")(logs)
    app.add_typer(names_app, name="names")


__all__ = [
    "ArgError",
    "choose_gas",
    "decode_one",
    "log_filter",
    "parse_arg",
    "parse_args",
    "parse_topic",
    "register",
    "show_event",
    "show_log",
    "show_value",
    "value_json",
]
