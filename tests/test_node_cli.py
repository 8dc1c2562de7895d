"""``qoin node --dev --mine``: mines real blocks, stops cleanly on Ctrl-C/SIGTERM, restarts from its
head, and refuses bad arguments with a message. Every wait is bounded; nothing sleeps for an event."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qoin.chain import genesis as genesis_mod
from qoin.cli.main import app
from qoin.process import Child, ChildFailed, Output
from tests.framework import Network, read_to_end, wait_until

TIMEOUT_S = 25.0
HEIGHT_RE = re.compile(r"^(new head|side block) height=(\d+) hash=([0-9a-f]{64}) ")
STOPPED_RE = re.compile(r"stopped at height=(\d+) hash=([0-9a-f]{64})")
STARTED_RE = re.compile(r"head height=(\d+) hash=([0-9a-f]{64})")
DEVNET_ADDRESS = str(genesis_mod.builtin("devnet").allocation[0].address)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "QOIN_HOME": str(tmp_path / "home")}


def _qoin(*args: str) -> list[str]:
    return [sys.executable, "-m", "qoin", *args]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _qoin(*args),
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=TIMEOUT_S,
        check=False,
    )


def write_easy_genesis(path: Path, attempts: int = 8) -> Path:
    """The devnet genesis, starting now, at ~``attempts`` attempts a block (8: blocks in tens of
    milliseconds; the built-in devnet's take ~500, seconds a block)."""
    obj = genesis_mod.builtin_json("devnet")
    obj["timestamp_ms"] = int(time.time() * 1000)
    obj["initial_target"] = hex(2**64 // attempts)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def easy_genesis(tmp_path: Path) -> Path:
    return write_easy_genesis(tmp_path / "easy-genesis.json")


def _heights(stdout: str) -> list[tuple[int, str]]:
    found = []
    for line in stdout.splitlines():
        if "height=" in line:
            match = HEIGHT_RE.match(line)
            assert match, line
            found.append((int(match[2]), match[3]))
    return found


def _stopped(stderr: str) -> tuple[int, str]:
    matches = STOPPED_RE.findall(stderr)
    assert len(matches) == 1, stderr
    return int(matches[0][0]), matches[0][1]


def _status(tmp_path: Path, datadir: Path) -> dict[str, object]:
    """``qoin chain status --json`` of a stopped node's data directory, run in this process (it
    only reads the store; a process of its own would cost a second's start)."""
    args = ["chain", "status", "--datadir", str(datadir), "--json"]
    result = CliRunner().invoke(app, args, env={"QOIN_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    status: dict[str, object] = json.loads(result.stdout)
    return status


def _mining_node(datadir: Path, *extra: str) -> list[str]:
    """``qoin node --dev --mine`` arguments, its RPC ports picked by the system."""
    return ["node", "--dev", "--mine", "--datadir", str(datadir), "--rpc-port", "0",
            "--consensus-rpc-port", "0", *extra]  # fmt: skip


def _mine(tmp_path: Path, datadir: Path, blocks: int, *extra: str) -> tuple[list[int], str]:
    """Mine ``blocks`` blocks on one worker; return the heights printed and stderr."""
    result = _run(
        tmp_path, *_mining_node(datadir, "--blocks", str(blocks), "--workers", "1", *extra)
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    heights = [height for height, _ in _heights(result.stdout)]
    assert len(heights) == blocks, result.stdout
    # One worker drops a solved template, so there are no side blocks: the head grows by one each.
    assert heights == sorted(set(heights)), result.stdout
    return heights, result.stderr


@pytest.mark.slow
def test_mines_blocks_and_continues_after_restart(tmp_path: Path, easy_genesis: Path) -> None:
    datadir = tmp_path / "node"
    heights, stderr = _mine(tmp_path, datadir, 3, "--genesis", str(easy_genesis))
    assert heights == [1, 2, 3]
    assert _stopped(stderr)[0] == 3
    # The genesis given once is kept in the datadir: a restart needs no --genesis.
    assert genesis_mod.load_file(datadir / "genesis.json") == genesis_mod.load_file(easy_genesis)

    heights, stderr = _mine(tmp_path, datadir, 2)
    started = STARTED_RE.search(stderr)
    assert started is not None, stderr
    assert int(started[1]) == 3
    assert heights == [4, 5]
    height, head = _stopped(stderr)
    assert height == 5
    status = _status(tmp_path, datadir)
    assert (status["height"], status["head"], status["blocks"]) == (5, head, 6)


@pytest.mark.slow
def test_mines_on_the_builtin_devnet(tmp_path: Path) -> None:
    """No --genesis: the built-in devnet genesis, re-timed to now, is saved in the datadir."""
    datadir = tmp_path / "node"
    result = _run(tmp_path, *_mining_node(datadir, "--blocks", "1"))
    assert result.returncode == 0, result.stderr
    assert [height for height, _ in _heights(result.stdout)] == [1]
    saved = genesis_mod.load_file(datadir / "genesis.json")
    assert saved.network == "devnet"
    assert saved.initial_target == genesis_mod.builtin("devnet").initial_target
    status = _status(tmp_path, datadir)
    assert (status["height"], status["head"]) == (1, _stopped(result.stderr)[1])


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> dict[int, int]:
    """Child pids of ``pid`` with their start times."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = _proc_stat(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
            if stat is not None and stat[1] == pid:
                found[int(entry.name)] = stat[2]
    return found


def _alive(pid: int, start_time: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start_time and stat[0] not in ("Z", "X")


def _descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid`` (children, theirs, ...) with its start time."""
    found = _children(pid)
    for child in list(found):
        found.update(_descendants(child))
    return found


def _start_until_first_block(net: Network, args: list[str]) -> Child:
    """Start ``qoin ARGS`` in the test's network (stopped when the test ends, or if this process
    dies); return once it printed its first block."""
    child = net.spawn("qoin node", args, Output(split=True))
    deadline = time.monotonic() + TIMEOUT_S
    after = 0
    while True:
        try:
            found = child.poll_for("height=", max(0.0, deadline - time.monotonic()), after)
        except ChildFailed:
            raise AssertionError("qoin node exited before mining a block") from None
        assert found is not None, "qoin node mined no block in time"
        if not child.seen[found[0]].stderr:
            return child
        after = found[0] + 1


def _wait(child: Child, timeout: float) -> int:
    """The exit status within ``timeout``; the process is killed if it does not exit."""
    return child.finish(time.monotonic() + timeout)


def _stderr(child: Child) -> str:
    """Everything an exited ``child`` wrote on stderr."""
    return "".join(line.text for line in read_to_end(child, 5) if line.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_node_cleanly(
    net: Network, tmp_path: Path, easy_genesis: Path, sig: signal.Signals
) -> None:
    datadir = tmp_path / "node"
    args = _mining_node(datadir, "--workers", "2", "--genesis", str(easy_genesis))
    node = _start_until_first_block(net, args)
    # the execution and consensus clients, the miner processes (and multiprocessing's helper)
    workers = _descendants(node.proc.pid)
    assert len(workers) >= 4, workers
    node.proc.send_signal(sig)
    returncode = _wait(node, 10)
    stderr = _stderr(node)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "stopping" in stderr
    height, head = _stopped(stderr)
    assert height >= 1
    # No client or miner process outlives the node (helpers exit once their parent's pipe closes).
    wait_until(lambda: not any(_alive(pid, start) for pid, start in workers.items()), timeout=5)

    # The store is consistent with what the node reported, and the node continues from it.
    status = _status(tmp_path, datadir)
    assert (status["height"], status["head"]) == (height, head)
    heights, stderr = _mine(tmp_path, datadir, 1)
    assert heights == [height + 1]
    height, head = _stopped(stderr)
    status = _status(tmp_path, datadir)
    assert (status["height"], status["head"]) == (height, head)


def _assert_clean_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr
    assert "height=" not in result.stdout


def test_node_without_dev_fails_clearly(tmp_path: Path) -> None:
    result = _run(tmp_path, "node", "--datadir", str(tmp_path / "node"))
    _assert_clean_failure(result, "--dev")
    assert not (tmp_path / "node").exists()


def test_invalid_coinbase_fails_clearly(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    result = _run(
        tmp_path, "node", "--dev", "--datadir", str(datadir), "--coinbase", "qoin1invalid"
    )
    _assert_clean_failure(result, "invalid address", "qoin1invalid")
    assert not datadir.exists()


def test_coinbase_without_keystore_fails_clearly(tmp_path: Path) -> None:
    keystores = tmp_path / "keystores"
    keystores.mkdir()
    datadir = tmp_path / "node"
    result = _run(
        tmp_path,
        "node",
        "--dev",
        "--mine",
        "--datadir",
        str(datadir),
        "--coinbase",
        DEVNET_ADDRESS,
        "--keystore-dir",
        str(keystores),
    )
    _assert_clean_failure(result, "no keystore", DEVNET_ADDRESS, str(keystores))
    assert not datadir.exists()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def test_node_stops_when_its_execution_client_dies(
    net: Network, tmp_path: Path, easy_genesis: Path
) -> None:
    """Two processes joined by the engine API: if one dies, the node stops the other and fails."""
    args = _mining_node(tmp_path / "node", "--workers", "1", "--genesis", str(easy_genesis))
    node = _start_until_first_block(net, args)
    children = _children(node.proc.pid)
    roles = {pid: _cmdline(pid) for pid in children}
    execution = [pid for pid, cmd in roles.items() if "execution" in cmd]
    consensus = [pid for pid, cmd in roles.items() if "consensus" in cmd]
    assert len(execution) == 1 and len(consensus) == 1, roles
    os.kill(execution[0], signal.SIGKILL)
    returncode = _wait(node, TIMEOUT_S)
    stderr = _stderr(node)
    assert returncode == 1, stderr
    assert "the execution client exited" in stderr
    assert "Traceback" not in stderr
    # the consensus client does not outlive the node
    wait_until(lambda: not _alive(consensus[0], children[consensus[0]]), timeout=5)


@pytest.mark.slow
def test_node_joins_p2p_when_asked(tmp_path: Path, easy_genesis: Path) -> None:
    datadir = tmp_path / "node"
    _, stderr = _mine(tmp_path, datadir, 1, "--genesis", str(easy_genesis), "--p2p-port", "0")
    found = re.search(r"p2p: node (qoin1\w+)@127\.0\.0\.1:(\d+)", stderr)
    assert found is not None, stderr
    key_file = datadir / "p2p-node-key.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The node id survives a restart.
    _, stderr = _mine(tmp_path, datadir, 1, "--p2p-port", "0")
    assert f"p2p: node {found[1]}@" in stderr


def test_a_bad_bootnode_fails_clearly(tmp_path: Path, easy_genesis: Path) -> None:
    result = _run(tmp_path, *_mining_node(tmp_path / "node", "--genesis", str(easy_genesis),
                                          "--p2p-port", "0", "--bootnode", "nowhere"))  # fmt: skip
    assert result.returncode != 0
    assert "--bootnode" in result.stderr and "Traceback" not in result.stderr, result.stderr
