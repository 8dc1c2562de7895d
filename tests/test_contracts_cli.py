"""`qoin contract`, `qoin logs` and `qoin names`: argument parsing (pure functions), the WebSocket
subscription client and `qoin logs` against a real server (a real event index and subscription
hub), error paths, and the acceptance scenario on a real `qoin node --dev --mine`."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from qoin.actors import NAMES_ADDRESS
from qoin.actors.names import REGISTERED
from qoin.chain import genesis as genesis_mod
from qoin.chain.genesis import Allocation
from qoin.chain.issuance import GENESIS_ALLOCATION
from qoin.cli.contracts import (
    MAX_UINT,
    ArgError,
    choose_gas,
    decode_one,
    log_filter,
    parse_arg,
    parse_args,
    parse_topic,
    show_log,
    show_value,
    value_json,
)
from qoin.cli.main import app
from qoin.crypto import keystore
from qoin.crypto.address import Address
from qoin.execution.abi import MAX_ARGS, Value, encode_value
from qoin.execution.events import (
    EventIndex,
    Log,
    block_logs,
    logs_json,
    parse_filter,
)
from qoin.execution.receipt import CallStatus, Event, Receipt
from qoin.process import Child
from qoin.rpc.client import RpcCallError, RpcTimeout, subscribe, websocket_url
from qoin.rpc.serve import BackgroundServer
from qoin.rpc.server import Method, Param, RpcServer
from qoin.rpc.subscriptions import HubLimits, SubscriptionEndpoint, SubscriptionHub
from tests.cliutil import DEVNET_PASSWORD, run_qoin
from tests.framework import SUPERVISOR, Network, Node, genesis, wait_until
from tests.test_dev_node_transfers import DEV_KEY

DEV_ADDRESS = keystore.load(DEV_KEY).address
"""The devnet key's address (``DEV_KEY``, password ``devnet``)."""
COUNTER = Path(__file__).parent.parent / "examples" / "contracts" / "counter.wasm"
INCREMENTED = hashlib.sha3_256(b"Incremented").hexdigest()
"""Topic 0 of the counter's event."""
TIMEOUT = 10.0


def h(label: str) -> bytes:
    return hashlib.sha3_256(label.encode()).digest()


A, B = Address(h("a")), Address(h("b"))
TRANSFER = h("Transfer")


def qoin(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``qoin`` command in a process of its own."""
    return run_qoin(*args, env={"QOIN_PASSWORD": DEVNET_PASSWORD})


RUNNER = CliRunner()


def cli(*args: str) -> Result:
    """The same command line in this process (fast: for the many error paths)."""
    return RUNNER.invoke(app, list(args), env={"QOIN_PASSWORD": None})


# -- arguments and values (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("12", 12),
        (str(MAX_UINT), MAX_UINT),
        ("u64:7", 7),
        ("uint:7", 7),
        ("0x", b""),
        ("0xab01", b"\xab\x01"),
        ("hex:ab01", b"\xab\x01"),
        ("bytes:0xab", b"\xab"),
        ("true", True),
        ("false", False),
        ("bool:false", False),
        (str(A), A),
        (f"addr:{A}", A),
        ("str:12", "12"),
        ("str:true", "true"),
        ("str:", ""),
        ("", ""),
        ("hello world", "hello world"),
        ("12abc", "12abc"),
        ("héllo", "héllo"),
    ],
)
def test_parse_arg(text: str, expected: Value) -> None:
    parsed = parse_arg(text)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (str(MAX_UINT + 1), "larger than the largest uint"),
        ("-1", "not an unsigned integer"),
        ("1.5", "not an unsigned integer"),
        ("1e9", "not an unsigned integer"),
        ("u64:x", "not an unsigned integer"),
        ("u64:", "not an unsigned integer"),
        ("0xabc", "not hex bytes"),
        ("0xzz", "not hex bytes"),
        ("qoin1bad", "invalid address"),
        ("addr:nope", "invalid address"),
        ("bool:yes", "a bool is true or false"),
        ("0x" + "00" * (64 * 1024 + 1), "at most"),
    ],
)
def test_parse_arg_refuses(text: str, why: str) -> None:
    with pytest.raises(ArgError, match=why):
        parse_arg(text)


def test_parse_args_bounded() -> None:
    assert parse_args(["1", "0x02", "x"]) == (1, b"\x02", "x")
    with pytest.raises(ArgError, match=f"at most {MAX_ARGS} arguments"):
        parse_args(["1"] * (MAX_ARGS + 1))


shown_values = st.one_of(
    st.integers(0, MAX_UINT),
    st.binary(max_size=64),
    st.booleans(),
    st.binary(min_size=32, max_size=32).map(Address),
)


@given(shown_values)
def test_shown_values_parse_back(value: Value) -> None:
    assert parse_arg(show_value(value)) == value


@given(st.text(max_size=40))
def test_strings_parse_with_their_prefix(text: str) -> None:
    assert parse_arg("str:" + text) == text


values = st.recursive(
    st.one_of(shown_values, st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=4).map(tuple),
    max_leaves=10,
)


@given(values)
def test_decode_one_inverts_encode_value(value: Value) -> None:
    assert decode_one(encode_value(value)) == value
    json.dumps(value_json(value))  # always JSON


def test_decode_one_is_none_for_other_data() -> None:
    assert decode_one(b"") is None
    assert decode_one(bytes(8)) is None  # trailing bytes: the counter's event data
    assert decode_one(b"\x09") is None  # unknown tag


def test_show_and_json_of_a_record() -> None:
    record: Value = (A, b"\x07", 108, "alice", True)
    assert show_value(record) == f'[{A}, 0x07, 108, "alice", true]'
    assert value_json(record) == [str(A), "0x07", 108, "alice", True]
    assert show_value('say "hi"\n') == '"say \\"hi\\"\\n"'


def test_choose_gas() -> None:
    assert choose_gas(100_000, 60_000_000) == 130_000
    assert choose_gas(59_000_000, 60_000_000) == 60_000_000  # capped at the block limit
    assert choose_gas(61_000_000, 60_000_000) == 61_000_000  # never below the estimate


def test_parse_topic() -> None:
    assert parse_topic("any") is None and parse_topic("*") is None
    assert parse_topic("sha3:Incremented") == [INCREMENTED]
    assert parse_topic("0x" + INCREMENTED) == [INCREMENTED]
    assert parse_topic(f"{TRANSFER.hex()},sha3:Incremented") == [TRANSFER.hex(), INCREMENTED]
    for bad in ("ab", "0x" + "zz" * 32, "", "sha4:x"):
        with pytest.raises(ArgError, match="a topic is 32 bytes"):
            parse_topic(bad)


def test_log_filter() -> None:
    assert log_filter([], []) == {}
    assert log_filter([str(A)], ["any", "sha3:Transfer"]) == {
        "address": [str(A)],
        "topics": [None, [TRANSFER.hex()]],
    }
    with pytest.raises(ArgError, match="at most 4"):
        log_filter([], ["any"] * 5)
    with pytest.raises(ArgError, match="invalid address"):
        log_filter(["qoin1nope"], [])


def test_show_log_marks_removed_ones() -> None:
    log = Log(Event(A, (TRANSFER,), encode_value(5)), 7, h("block"), h("tx"), 0, 3)
    line = show_log(logs_json([log])[0])
    assert line.startswith(f"block 7 tx {h('tx').hex()} log 3: {A} topics {TRANSFER.hex()}")
    assert line.endswith("data 0x0005 (5)")
    removed = Log(log.event, 7, h("block"), h("tx"), 0, 3, removed=True)
    assert show_log(logs_json([removed])[0]) == "removed " + line


def test_websocket_url() -> None:
    assert websocket_url("http://127.0.0.1:8645/") == "ws://127.0.0.1:8645/"
    assert websocket_url("https://node.example/rpc") == "wss://node.example/rpc"
    assert websocket_url("ws://x:1/") == "ws://x:1/"
    with pytest.raises(RpcCallError, match="not an http"):
        websocket_url("ftp://x/")


# -- a real log server: an event index, a subscription hub ------------------------------------------


@dataclass
class LogServer:
    """A JSON-RPC server with ``qoin_blockNumber``, ``qoin_getLogs`` (a real
    :class:`EventIndex`) and ``qoin_subscribe`` (a real :class:`SubscriptionHub`)."""

    hub: SubscriptionHub
    server: BackgroundServer
    index: EventIndex
    lock: threading.Lock
    head: list[int]

    @property
    def url(self) -> str:
        return self.server.url

    def add_block(self, height: int, events: list[Event]) -> list[Log]:
        receipts = [
            Receipt(0, h(f"tx{height}"), A, 0, False, CallStatus.SUCCESS, 0, "", b"", tuple(events))
        ]
        with self.lock:
            self.index.add_block(h(f"block{height}"), height, receipts)
            self.head[0] = max(self.head[0], height)
        return block_logs(h(f"block{height}"), height, receipts)


@contextmanager
def log_server(max_frame: int = 64 * 1024) -> Iterator[LogServer]:
    db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    EventIndex.create(db)
    index, lock, head = EventIndex(db), threading.Lock(), [0]

    def get_logs(log_filter: Any) -> list[dict[str, Any]]:
        with lock:
            return logs_json(index.query(parse_filter(log_filter, head[0])))

    def block_number() -> int:
        return head[0]

    hub = SubscriptionHub(HubLimits(max_frame=max_frame))
    rpc = RpcServer(
        "logs",
        [
            Method("qoin_blockNumber", block_number, (), {"type": "integer"}),
            Method("qoin_getLogs", get_logs, (Param("log_filter", {"type": "object"}),)),
        ],
    )
    rpc.add_websocket("/", SubscriptionEndpoint(hub, rpc))
    with BackgroundServer(rpc.app, websocket_max_frame=max_frame) as server:
        yield LogServer(hub, server, index, lock, head)
    db.close()


def test_logs_of_a_range() -> None:
    with log_server() as served:
        served.add_block(3, [Event(A, (TRANSFER, h("x")), encode_value(7))])
        served.add_block(5, [Event(B, (h("Other"),), b"raw"), Event(A, (TRANSFER,), b"")])
        everything = cli("logs", "--rpc", served.url)
        assert everything.exit_code == 0, everything.output
        lines = everything.stdout.splitlines()
        assert len(lines) == 3
        assert lines[0].startswith(f"block 3 tx {h('tx3').hex()} log 0: {A}")
        assert lines[0].endswith("data 0x0007 (7)")
        assert lines[1].startswith("block 5 ") and f"{B} topics" in lines[1]
        by_address = cli("logs", "--address", str(A), "--rpc", served.url, "--json")
        assert by_address.exit_code == 0, by_address.output
        found = json.loads(by_address.stdout)
        assert [(log["blockNumber"], log["logIndex"]) for log in found] == [(3, 0), (5, 1)]
        by_topic = cli(
            "logs", "--topic", "sha3:Transfer", "--topic", "any", "--from", "4", "--rpc", served.url
        )
        assert by_topic.exit_code == 0, by_topic.output
        assert by_topic.stdout == ""  # block 5's Transfer has one topic only
        ranged = cli("logs", "--from", "4", "--to", "5", "--rpc", served.url)
        assert len(ranged.stdout.splitlines()) == 2
        bad = cli("logs", "--topic", "0x12", "--rpc", served.url)
        assert bad.exit_code == 2 and "bad filter" in bad.stderr


def test_subscribe_reads_notifications() -> None:
    with log_server() as served:
        with subscribe(served.url, "logs", {"address": str(A)}, timeout=TIMEOUT) as subscription:
            assert len(subscription.id) == 32
            with pytest.raises(RpcTimeout):
                subscription.next(0.05)
            logs = served.add_block(1, [Event(B, (), b""), Event(A, (TRANSFER,), b"1")])
            served.hub.publish_logs(logs)
            got = subscription.next(TIMEOUT)
            assert got == logs_json(logs)[1]  # B's event is filtered out
        wait_until(lambda: served.hub.stats().subscriptions == 0, TIMEOUT)
        with pytest.raises(RpcCallError, match=r"unknown|invalid|kind") as refused:
            subscribe(served.url, "noSuchKind", timeout=TIMEOUT)
        assert refused.value.code is not None


def test_subscription_ends_on_an_oversize_message() -> None:
    with log_server() as served, subscribe(served.url, "logs", max_message=1024) as subscription:
        served.hub.publish_logs(served.add_block(1, [Event(A, (), bytes(4000))]))
        with pytest.raises(RpcCallError, match="closed the subscription"):
            subscription.next(TIMEOUT)


def test_subscribe_to_nothing() -> None:
    with pytest.raises(RpcCallError, match="unreachable") as refused:
        subscribe("http://127.0.0.1:9/", "logs", timeout=TIMEOUT)
    assert refused.value.code is None


def test_logs_follow_until_ctrl_c(net: Network) -> None:
    with log_server() as served:
        served.add_block(2, [Event(A, (TRANSFER,), b"old")])
        child = net.spawn("follow", ["logs", "--follow", "--from", "0", "--rpc", served.url])
        # The past log comes after the subscription is made: it is live once this line shows.
        child.wait_for(r"^block 2 .* data 0x6f6c64$", TIMEOUT)
        assert served.hub.stats().subscriptions == 1
        added = served.add_block(3, [Event(B, (h("Other"),), encode_value("hi"))])
        served.hub.publish_logs(added)
        child.wait_for(r'^block 3 tx \w+ log 0: .* data 0x02026869 \("hi"\)$', TIMEOUT)
        removed = [Log(log.event, 3, log.block_hash, log.tx_id, 0, 0, True) for log in added]
        served.hub.publish_logs(removed)
        child.wait_for(r"^removed block 3 ", TIMEOUT)
        child.proc.send_signal(signal.SIGINT)
        assert child.finish(time.monotonic() + TIMEOUT) == 0
        assert not any("error" in line.text for line in child.collect())


# -- error paths ------------------------------------------------------------------------------------


def test_clear_errors(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9/"
    contract = str(A)
    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm" + bytes(300_000))
    cases: list[tuple[list[str], int, str]] = [
        (["contract", "query", "qoin1bad", "get", "--rpc", nowhere], 2, "invalid address"),
        (["contract", "query", contract, "get", "--rpc", nowhere, "--", "-1"], 2, "bad argument"),
        (["contract", "query", contract, "get", "--rpc", nowhere], 1, "cannot reach"),
        (["contract", "call", contract, "inc", "--key", str(DEV_KEY), "--rpc", nowhere], 1,
         "cannot reach"),
        (["contract", "call", contract, "inc", "--key", str(tmp_path / "no.json")], 2,
         "cannot read keystore"),
        (["contract", "deploy", str(tmp_path / "no.wasm"), "--key", str(DEV_KEY)], 2,
         "cannot read WebAssembly module"),
        (["contract", "deploy", str(DEV_KEY), "--key", str(DEV_KEY)], 2,
         "not a WebAssembly module"),
        (["contract", "deploy", str(big), "--key", str(DEV_KEY)], 2, "larger than 262144 bytes"),
        (["contract", "receipt", "abcd", "--rpc", nowhere], 2, "32 bytes of hex"),
        (["logs", "--rpc", nowhere], 1, "cannot reach"),
        (["logs", "--follow", "--to", "3", "--rpc", nowhere], 2, "takes no --to"),
        (["logs", "--address", "qoin1x", "--rpc", nowhere], 2, "bad filter"),
        (["names", "resolve", "No", "--rpc", nowhere], 2, "name 'No'"),
        (["names", "resolve", "alice", "--rpc", nowhere], 1, "cannot reach"),
        (["names", "register", "alice", "--value", "0x01", "--blocks", "100", "--key",
          str(DEV_KEY)], 2, "32 bytes"),
        (["names", "renew", "alice", "--blocks", "5", "--key", str(DEV_KEY)], 2, "--blocks is"),
    ]  # fmt: skip
    for args, code, message in cases:
        done = cli(*args)
        assert (done.exit_code, message in done.stderr) == (code, True), (args, done.output)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


def test_errors_of_the_real_command(tmp_path: Path) -> None:
    """One line on stderr, no traceback, the CLI's exit codes: as users see them."""
    nowhere = "http://127.0.0.1:9/"
    for args, code, message in [
        (["contract", "call", "qoin1bad", "inc", "--key", str(DEV_KEY)], 2, "invalid address"),
        (["contract", "deploy", str(tmp_path / "no.wasm"), "--key", str(DEV_KEY)], 2,
         "cannot read WebAssembly module"),
        (["contract", "query", str(A), "get", "--rpc", nowhere], 1, "cannot reach"),
        (["logs", "--follow", "--rpc", nowhere], 1, "cannot subscribe"),
    ]:  # fmt: skip
        done = qoin(*args)
        assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


# -- the acceptance scenario on a real dev node ------------------------------------------------------


def start_dev_node(node: Node) -> str:
    """``qoin node --dev --mine`` on the test network's genesis (the easiest target: blocks come
    every few tens of milliseconds), its allocation held by the devnet key; its user RPC URL."""
    chosen = replace(genesis(), allocation=(Allocation(DEV_ADDRESS, GENESIS_ALLOCATION),))
    genesis_file = node.network.workdir / "dev-genesis.json"
    genesis_file.write_text(json.dumps(genesis_mod.to_json(chosen)))
    node.start_supervisor(
        "--dev", "--mine", "--workers", "1", "--rpc-port", "0", "--genesis", str(genesis_file)
    )
    return node.user.url


def field(output: str, name: str) -> str:
    """The value of a ``name: value`` line."""
    for line in output.splitlines():
        if line.startswith(f"{name}: "):
            return line.removeprefix(f"{name}: ")
    raise AssertionError(f"no {name!r} line in {output!r}")


@pytest.mark.slow
def test_counter_and_names_on_a_dev_node(net: Network) -> None:
    """The acceptance scenario; the commands that wait for a block run as real processes, the
    others in this process (each `qoin` process takes a second or two to start)."""
    assert COUNTER.exists(), "examples/contracts/counter.wasm: run examples/contracts/build.py"
    node = net.add("dev")
    url = start_dev_node(node)
    key = ("--key", str(DEV_KEY), "--rpc", url)
    password = {"QOIN_PASSWORD": DEVNET_PASSWORD}

    deployed = qoin("contract", "deploy", str(COUNTER), *key)
    assert deployed.returncode == 0, deployed.stderr
    contract = field(deployed.stdout, "contract")
    assert field(deployed.stdout, "status") == "success"
    assert len(field(deployed.stdout, "tx")) == 64

    increment = ["contract", "call", contract, "increment", *key]
    follow: Child | None = None
    for expected in (1, 2):
        called = RUNNER.invoke(app, increment, env=password)
        assert called.exit_code == 0, called.output
        assert field(called.stdout, "status") == "success"
        assert int(field(called.stdout, "gas used")) > 21_000
        assert field(called.stdout, "events") == "1"
        assert field(called.stdout, "event 0").endswith(f"data 0x{expected:016x}")
        if follow is None:  # follow the logs over the WebSocket: the past one, then the next
            args = [
                "logs",
                "--follow",
                "--from",
                "0",
                "--address",
                contract,
                "--json",
                "--rpc",
                url,
            ]
            follow = net.spawn("follow", args)
            _, first, _ = follow.wait_for(r"^\{.*\}$", TIMEOUT)  # subscribed before the query
            assert json.loads(first[0])["data"] == "0000000000000001"
    assert follow is not None
    _, second, _ = follow.wait_for(r'^\{.*"data":"0000000000000002".*\}$', TIMEOUT)
    assert json.loads(second[0])["removed"] is False
    assert follow.stop() == 0  # SIGTERM: a clean stop

    queried = qoin("contract", "query", contract, "get", "--rpc", url)
    assert (queried.returncode, queried.stdout) == (0, "2\n"), queried.stderr
    as_json = json.loads(cli("contract", "query", contract, "get", "--rpc", url, "--json").stdout)
    assert as_json["returnValue"] == 2 and as_json["returnData"] == "0002"

    logged = qoin("logs", "--address", contract, "--rpc", url)
    assert logged.returncode == 0, logged.stderr
    lines = logged.stdout.splitlines()
    assert len(lines) == 2, logged.stdout
    assert all(f"{contract} topics {INCREMENTED} " in line for line in lines)
    assert lines[0].endswith("data 0x0000000000000001")
    assert lines[1].endswith("data 0x0000000000000002")

    value = "0x" + "07" * 32
    register = ("names", "register", "alice", "--value", value, "--blocks", "100000", *key)
    registered = RUNNER.invoke(app, list(register), env=password)
    assert registered.exit_code == 0, registered.output
    assert registered.stdout.splitlines()[-1].startswith("registered alice until height ")
    resolved = cli("names", "resolve", "alice", "--rpc", url, "--json")
    assert resolved.exit_code == 0, resolved.output
    record = json.loads(resolved.stdout)
    assert (record["owner"], record["value"]) == (str(DEV_ADDRESS), value)
    assert record["expiry"] == int(registered.stdout.split()[-1])
    names_logs = cli(
        "logs", "--address", str(NAMES_ADDRESS), "--topic", REGISTERED.hex(), "--rpc", url
    )
    assert len(names_logs.stdout.splitlines()) == 1, names_logs.output

    # The estimate finds the revert before anything is sent...
    again = RUNNER.invoke(app, list(register), env=password)
    assert again.exit_code == 1
    assert "the call reverted: name 'alice': held by" in again.stderr
    assert "nothing was sent" in again.stderr
    # ...and with a gas limit given, the call is mined and reverts on chain.
    mined = qoin(*register, "--gas", "200000")
    assert mined.returncode == 1
    assert field(mined.stdout, "status") == "reverted"
    assert "name 'alice': held by" in field(mined.stdout, "reason")
    assert mined.stderr.startswith("error: the call reverted: name 'alice': held by")
    free = cli("names", "resolve", "bobby", "--rpc", url)
    assert free.exit_code == 1 and "name 'bobby': not registered" in free.stderr

    assert node.stop_process(SUPERVISOR, signal.SIGINT) == 0
