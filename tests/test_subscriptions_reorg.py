"""WebSocket subscriptions of a real node (``qoin consensus`` + ``qoin execution`` processes)
through a reorg: a log of a block that leaves the canonical chain comes again with
``removed: true``, and new heads of the winning branch follow."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import ClientConnection, connect

from qoin.execution.account import contract_address
from tests.blocktools import call_tx, deploy_tx, example
from tests.framework import FUNDED, Network
from tests.procutil import Producer

RECEIVE_S = 30.0


def ws_url(http_url: str) -> str:
    return "ws://" + http_url.removeprefix("http://")


def request(ws: ClientConnection, request_id: int, method: str, *params: Any) -> Any:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
    answer = json.loads(ws.recv(timeout=RECEIVE_S))
    assert answer.get("id") == request_id, answer
    return answer["result"]


def notifications(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` notifications, each as ``{"subscription", "result"}``."""
    found = []
    for _ in range(count):
        message = json.loads(ws.recv(timeout=RECEIVE_S))
        assert message["method"] == "qoin_subscription", message
        found.append(message["params"])
    return found


def test_logs_and_heads_through_a_reorg(net: Network) -> None:
    node = net.node("a")
    side_a, side_b = Producer(net.workdir / "side-a"), Producer(net.workdir / "side-b")
    try:
        # Height 1, on both sides: the counter contract.
        deployed = side_a.block((deploy_tx(FUNDED, 0, example("counter.wasm"), reveal=True),))
        for producer in (side_a, side_b):
            producer.accept(deployed)
        assert node.rpc.call("consensus_submitBlock", deployed.encode().hex())["headChanged"]
        counter = contract_address(FUNDED.address, 0)
        assert node.user.call("qoin_getCode", str(counter))

        with connect(ws_url(node.user.url), open_timeout=RECEIVE_S) as ws:
            logs_id = request(ws, 1, "qoin_subscribe", "logs", {"address": str(counter)})
            heads_id = request(ws, 2, "qoin_subscribe", "newHeads")
            # Height 2 on side A: an increment, whose event the subscriber gets.
            incremented = side_a.block((call_tx(FUNDED, 1, counter, "increment", reveal=False),))
            side_a.accept(incremented)
            assert node.rpc.call("consensus_submitBlock", incremented.encode().hex())["headChanged"]
            first = {n["subscription"]: n["result"] for n in notifications(ws, 2)}
            assert first[heads_id]["hash"] == incremented.block_hash.hex()
            added = first[logs_id]
            assert added["removed"] is False and added["blockHash"] == incremented.block_hash.hex()
            assert (
                added["address"] == str(counter) and added["data"] == (1).to_bytes(8, "big").hex()
            )
            # Side B, heavier (two empty blocks), takes over: the log is removed.
            heavier = []
            for _ in range(2):
                block = side_b.block(())
                side_b.accept(block)
                heavier.append(block)
            node.rpc.call("consensus_submitBlock", heavier[0].encode().hex())
            assert node.rpc.call("consensus_submitBlock", heavier[1].encode().hex())["headChanged"]
            after = notifications(ws, 3)
            removed = [n["result"] for n in after if n["subscription"] == logs_id]
            heads = [n["result"]["hash"] for n in after if n["subscription"] == heads_id]
            assert removed == [{**added, "removed": True}]
            assert heads == [block.block_hash.hex() for block in heavier]
            assert request(ws, 3, "qoin_unsubscribe", logs_id) is True
        # The index agrees: no log of the counter on the canonical chain now.
        assert node.user.call("qoin_getLogs", {"fromBlock": 0, "address": str(counter)}) == []
    finally:
        side_a.close()
        side_b.close()
