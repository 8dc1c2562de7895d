"""No process outlives its parent, and a closed output never breaks a stop.

The helper itself (:mod:`qoin.process`) is tried with small Python children; then ``qoin node`` and
``qoin devnet`` are killed (SIGKILL), hung up (SIGHUP) and given an output whose reader exits, and
the processes left are counted: every process a test starts carries the test's unique directory
in its command line or its environment (miner workers and multiprocessing's helper inherit only
the environment), so :func:`_left` finds every one of them, however deep. Each count must reach
zero within a bounded wait."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qoin.process import (
    EXIT_ORPHANED,
    Child,
    ChildFailed,
    Line,
    Output,
    lifeline,
    on_lasting_thread,
)
from tests.framework import read_to_end, wait_until
from tests.test_node_cli import write_easy_genesis

MARK = "QOIN_TEST_MARK"
"""The environment variable that tags every process of a test (and, inherited, their children)."""
GONE_S = 60.0
"""How long the processes of a killed parent may take to stop (a clean stop; slow shared cores)."""
RUN_S = 150.0
"""How long a devnet or node may take to reach the state a test waits for."""
SMALL = ("--nodes", "2", "--miners", "1")
DEVNET_ATTEMPTS = 32
"""Attempts a block of the devnets' genesis (the built-in devnet's take ~500, seconds a block)."""
RUNNING = r"n0\* h=[1-9]\d* [0-9a-f]{8} p=1"
"""A devnet view line once node 0 mined a block and has its peer."""
SLEEPER = "import time\nprint('ready', flush=True)\ntime.sleep(600)"


# -- counting processes ---------------------------------------------------------------------------


def _tagged(pid: int, mark: str) -> bool:
    """Whether process ``pid`` names ``mark`` in its command line or carries it in its
    environment (a zombie has neither)."""
    proc = Path("/proc") / str(pid)
    try:
        if mark.encode() in (proc / "cmdline").read_bytes():
            return True
        return f"{MARK}={mark}".encode() in (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours
        return False


def _left(mark: str) -> list[int]:
    """The live processes tagged with ``mark``."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if pid != os.getpid() and _tagged(pid, mark)]


def _await_none_left(mark: str, timeout: float = GONE_S) -> None:
    """Wait until no process tagged with ``mark`` is left; fail naming those that are."""
    try:
        wait_until(lambda: not _left(mark), timeout, 0.05, "no process left")
    except pytest.fail.Exception:
        left = {pid: _describe(pid) for pid in _left(mark)}
        pytest.fail(f"processes left after {timeout:g} s: {left}", pytrace=False)


def _describe(pid: int) -> str:
    proc = Path("/proc") / str(pid)
    try:
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = dict(
            line.split(":\t", 1)
            for line in (proc / "status").read_text().splitlines()
            if ":\t" in line
        )
    except OSError:
        return "gone"
    threads = []
    for task in sorted((proc / "task").iterdir()):
        with contextlib.suppress(OSError):
            threads.append(f"{(task / 'comm').read_text().strip()}@{(task / 'wchan').read_text()}")
    signals = {key: status.get(key) for key in ("ShdPnd", "SigBlk", "SigCgt")}
    return (
        f"{command[:200]} (state {status.get('State')}, parent {status.get('PPid')}, "
        f"signals {signals}, threads {threads})"
    )


def _kill_left(mark: str) -> None:
    """Whatever a failed test leaves (so that no process outlives it, even then)."""
    for pid in _left(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def _env(mark: str) -> dict[str, str]:
    return {**os.environ, MARK: mark, "QOIN_HOME": str(Path(mark) / "home")}


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test's tag: its directory, in the environment of every process it starts."""
    tag = str(tmp_path)
    monkeypatch.setenv(MARK, tag)
    monkeypatch.setenv("QOIN_HOME", str(tmp_path / "home"))
    try:
        yield tag
    finally:
        _kill_left(tag)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# -- the helper -----------------------------------------------------------------------------------


START_SLEEPER = (
    f"child = Child.spawn('sleeper', [sys.executable, '-c', {SLEEPER!r}])\n"
    "child.wait_for('ready')\nprint('child', child.proc.pid, flush=True)\n"
)
"""Python lines that start a sleeper with the helper and print its pid."""


def _kill_parent_of_sleeper(mark: str, code: str) -> None:
    """Run ``code`` (it prints ``child PID`` once its sleeper runs, then sleeps), SIGKILL it, and
    wait until no process of the test is left."""
    parent = Child.spawn("parent", _python(code))
    try:
        sleeper = int(parent.wait_for(r"child (\d+)")[1][1])
        assert sleeper in _left(mark)
        os.kill(parent.proc.pid, signal.SIGKILL)
        _await_none_left(mark)
    finally:
        parent.stop(5)


def test_a_child_stops_when_its_parent_is_killed(mark: str) -> None:
    """A parent that uses the helper is SIGKILLed: its child (a sleeper) gets its lifeline's
    SIGTERM."""
    _kill_parent_of_sleeper(
        mark,
        f"import sys, time\nfrom qoin.process import Child\n{START_SLEEPER}time.sleep(600)",
    )


def test_miner_workers_die_with_a_killed_miner(mark: str) -> None:
    """A process mining with two worker processes is SIGKILLed (it cannot stop them): the
    workers' lifelines kill them, and multiprocessing's helper exits once they are gone."""
    owner = Child.spawn(
        "miner owner",
        _python(
            "import time\nfrom qoin.crypto.hybrid import generate_keypair\n"
            "from qoin.pow.miner import Miner\nminer = Miner(generate_keypair(), 2).start()\n"
            "print('mining', flush=True)\ntime.sleep(600)"
        ),
    )
    try:
        owner.wait_for("mining")
        wait_until(lambda: len(_left(mark)) >= 3, 30, 0.05, "the owner and its two workers")
        os.kill(owner.proc.pid, signal.SIGKILL)
        _await_none_left(mark)
    finally:
        owner.stop(5)


def test_a_child_whose_parent_already_died_exits_at_once() -> None:
    """The lifeline's check: a parent other than the one expected means it died before the
    lifeline was set."""
    child = Child.spawn(
        "orphan", _python("from qoin.process import lifeline\nlifeline(1)\nprint('still here')")
    )
    assert child.finish(time.monotonic() + 30) == EXIT_ORPHANED
    assert "still here" not in child.tail()


def _term_pending(pid: int) -> bool:
    """Whether SIGTERM is pending (blocked, so not yet acted on) for process ``pid``."""
    status = (Path("/proc") / str(pid) / "status").read_text()
    pending = int(re.search(r"^ShdPnd:\s*([0-9a-f]+)", status, re.MULTILINE)[1], 16)  # type: ignore[index]
    return bool(pending & (1 << (signal.SIGTERM - 1)))


BLOCKS_TERM = (
    "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "print('ready', flush=True)\ntime.sleep(600)"
)


@pytest.mark.skipif(sys.platform != "linux", reason="the lifeline is Linux's parent-death signal")
def test_a_child_started_from_a_short_lived_thread_keeps_its_lifeline_to_the_process() -> None:
    """Linux signals a child when the *thread* that forked it ends: the helper forks on a thread
    that lasts, so a short-lived thread's end sends nothing; forking on that thread itself
    (the control) would."""
    children: list[Child] = []
    controls: list[subprocess.Popen[bytes]] = []
    thread_ids: list[int] = []

    def start() -> None:
        thread_ids.append(threading.get_native_id())
        children.append(Child.spawn("blocker", _python(BLOCKS_TERM)))
        controls.append(
            subprocess.Popen(  # forked here, with the same lifeline: the mistake avoided
                _python(BLOCKS_TERM),
                stdout=subprocess.DEVNULL,
                preexec_fn=lambda: lifeline(os.getppid()),  # noqa: PLW1509
            )
        )

    short = threading.Thread(target=start)
    short.start()
    short.join()
    try:
        child, control = children[0], controls[0]
        child.wait_for("ready")
        # The thread is reaped only after the kernel sent its children's parent-death signals.
        task = Path(f"/proc/self/task/{thread_ids[0]}")
        wait_until(lambda: not task.exists(), 10, 0.01, "the short-lived thread reaped")
        wait_until(lambda: _term_pending(control.pid), 10, 0.01, "the control signalled")
        assert not _term_pending(child.proc.pid)
        assert child.exited() is None
    finally:
        for started in children:
            started.proc.kill()
            started.stop(5)
        for control in controls:
            control.kill()
            control.wait(5)


@pytest.mark.skipif(sys.platform != "linux", reason="the lifeline is Linux's parent-death signal")
def test_a_child_forked_while_sigterm_is_blocked_still_stops_with_its_parent(mark: str) -> None:
    """A signal mask survives fork and exec: the first child started from a thread that blocks
    SIGTERM (which makes the lasting spawning thread, with that mask) must still act on its
    lifeline's SIGTERM when the parent is SIGKILLed."""
    start = "".join(f"    {line}\n" for line in START_SLEEPER.splitlines())
    _kill_parent_of_sleeper(
        mark,
        "import signal, sys, threading, time\nfrom qoin.process import Child\ndef start():\n"
        f"    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})\n{start}"
        "threading.Thread(target=start).start()\ntime.sleep(600)",
    )


def test_on_lasting_thread_runs_on_the_main_or_one_spawning_thread() -> None:
    assert on_lasting_thread(threading.current_thread) is threading.main_thread()
    seen: list[threading.Thread] = []
    for _ in range(2):
        worker = threading.Thread(
            target=lambda: seen.append(on_lasting_thread(threading.current_thread))
        )
        worker.start()
        worker.join(10)
    assert seen[0] is seen[1] and seen[0].is_alive() and seen[0].daemon
    errors: list[BaseException] = []

    def divide() -> None:
        try:
            on_lasting_thread(lambda: 1 / 0)
        except ZeroDivisionError as exc:  # raised in the spawning thread, reaches the caller
            errors.append(exc)

    failing = threading.Thread(target=divide)
    failing.start()
    failing.join(10)
    assert len(errors) == 1


def test_output_forwarded_watched_logged_and_bounded(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "child.log"
    lines: list[str] = []
    code = (
        "import sys\nprint('out one')\nprint('err one', file=sys.stderr)\n"
        "print('ready at 7')\nsys.stdout.write('x' * 200000 + '\\n')\nprint('last', end='')"
    )
    child = Child.spawn(
        "printer",
        _python(code),
        Output(keep=False, watch=(r"ready at (\d+)",), log=log, forward=True, prefix="[p] ",
               on_line=lambda line: lines.append(line.text)),
    )  # fmt: skip
    found = child.first_match(r"ready at (\d+)", 30)
    assert found is not None and found[0][1] == "7"
    assert child.finish(time.monotonic() + 30) == 0
    assert child.incoming.get(timeout=5) is None  # lines are not kept: only the end
    with pytest.raises(ValueError, match="not kept"):
        child.poll_for("out", 1)
    # stdout and stderr are read apart: their lines interleave in any order, each stream's in its own.
    assert "out one\n" in lines and "err one\n" in lines
    assert [line for line in lines if line != "err one\n"][-1] == "last"
    pieces = [text for text in lines if text.startswith("x")]
    assert [len(text) for text in pieces] == [65536, 65536, 65536, 200000 - 3 * 65536 + 1]
    assert log.read_text() == "".join(lines)
    out, err = capfd.readouterr()
    assert "[p] out one\n[p] ready at 7\n[p] x" in out and out.endswith("[p] last")
    assert err == "[p] err one\n"


def test_an_error_in_a_line_callback_is_reported_not_taken_for_the_end_of_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in an ``on_line`` callback (here a ValueError) reaches :func:`threading.excepthook`;
    it is not mistaken for a pipe closed under the reader."""
    reported: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_type))

    def refuse(line: Line) -> None:
        raise ValueError(f"cannot take {line.text!r}")

    child = Child.spawn("printer", _python("print('one')"), Output(on_line=refuse))
    assert child.finish(time.monotonic() + 30) == 0
    assert reported == [ValueError]


def test_split_output_tells_stdout_from_stderr() -> None:
    code = "import sys\nprint('{\"a\": 1}')\nprint('progress', file=sys.stderr)\nprint('[2]')"
    child = Child.spawn("splitter", _python(code), Output(split=True))
    assert child.finish(time.monotonic() + 30) == 0
    lines = child.collect()
    assert [line.text for line in lines if not line.stderr] == ['{"a": 1}\n', "[2]\n"]
    assert [line.text for line in lines if line.stderr] == ["progress\n"]
    assert child.collect() == lines  # the end stays marked: nothing more, no wait


def test_first_match_fails_with_the_output_when_the_child_exits() -> None:
    child = Child.spawn("quitter", _python("print('no luck'); raise SystemExit(3)"),
                        Output(keep=False, watch=("ready",)))  # fmt: skip
    with pytest.raises(ChildFailed, match=r"(?s)exited before it was ready.*no luck"):
        child.first_match("ready", 30)
    assert child.finish(time.monotonic() + 30) == 3
    cancel = threading.Event()
    cancel.set()
    waiting = Child.spawn("waiting", _python(SLEEPER), Output(keep=False, watch=("never",)))
    try:
        assert waiting.first_match("never", 30, cancel) is None
    finally:
        assert waiting.stop() == -signal.SIGTERM


def test_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    code = (
        "import os, sys, time\npath = sys.argv[1]\n"
        "open(path + '.tmp', 'w').write('{\"port\": 5}\\n')\n"
        "os.replace(path + '.tmp', path)\ntime.sleep(600)"
    )
    child = Child.spawn("writer", [*_python(code), str(ready)])
    try:
        assert child.ready_file(ready, 30) == '{"port": 5}\n'
    finally:
        child.stop()
    quitter = Child.spawn("quitter", _python("print('bye')"))
    with pytest.raises(ChildFailed, match="exited"):
        quitter.ready_file(tmp_path / "never", 30)


def test_stop_kills_a_child_that_ignores_sigterm_and_what_is_left_of_its_group(mark: str) -> None:
    code = (
        "import signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        "print('ready', flush=True)\ntime.sleep(600)"
    )
    child = Child.spawn("stubborn", _python(code))
    child.wait_for("ready")
    wait_until(lambda: len(_left(mark)) == 2, 30, 0.05, "the child and its grandchild")
    assert child.stop(0.5) == -signal.SIGKILL
    wait_until(lambda: not _left(mark), 10, 0.05, "no process left")


# A process in stop_on_signals whose main thread waits with no timeout, with SIGTERM (or SIGINT)
# blocked on the main thread, so that the kernel delivers it to the other thread.
OTHER_THREAD_GETS_IT = """
import signal, sys, threading
from qoin.process import stop_on_signals
sig = signal.Signals[sys.argv[1]]
other = threading.Thread(target=threading.Event().wait, daemon=True)
other.start()
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
done = threading.Event()
with stop_on_signals(done.set) as received:
    print('ready', flush=True)
    done.wait()
print('stopped by', [signal.Signals(s).name for s in received], flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="thread-directed delivery as on Linux")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_taken_by_another_thread_stops_a_main_thread_that_waits(
    sig: signal.Signals,
) -> None:
    """The kernel may give a process's signal to any of its threads (a lifeline's SIGTERM
    included): the stop must not wait until the main thread runs Python code again, which a
    main thread blocked in ``Event.wait()`` never does (an execution client outlived its killed
    devnet this way, until its next periodic wake-up)."""
    child = Child.spawn("waiter", [*_python(OTHER_THREAD_GETS_IT), sig.name])
    try:
        child.wait_for("ready")
        child.proc.send_signal(sig)
        child.wait_for(rf"stopped by \['{sig.name}'\]", 30)
        assert child.finish(time.monotonic() + 30) == 0
    finally:
        child.stop(5)


@pytest.mark.parametrize("output", ["pipe", "terminal"])
def test_a_closed_output_is_no_error(output: str) -> None:
    """Writes to a pipe whose reader exited (EPIPE) or to a terminal that closed (EIO), in a
    process that forgives a closed output: they go nowhere, the process goes on, and its exit
    prints no traceback."""
    if output == "pipe":
        reader, writer = os.pipe()
    else:
        reader, writer = os.openpty()  # a terminal: the test holds the master side
    os.close(reader)
    code = (
        "import sys\nfrom qoin.process import forgive_closed_output\nforgive_closed_output()\n"
        "for _ in range(1000):\n    print('x' * 100)\nsys.stdout.write('unflushed')\n"
        "print('went on', file=sys.stderr)"
    )
    try:
        done = subprocess.run(_python(code), stdout=writer, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "went on\n"


# -- qoin node ------------------------------------------------------------------------------------


@pytest.fixture
def easy_genesis(tmp_path: Path) -> Path:
    return write_easy_genesis(tmp_path / "easy-genesis.json")


def _node_args(datadir: Path, *extra: str) -> list[str]:
    return ["node", "--dev", "--mine", "--datadir", str(datadir), "--rpc-port", "0",
            "--consensus-rpc-port", "0", *extra]  # fmt: skip


def _mines_again(mark: str, datadir: Path) -> None:
    """A node on ``datadir`` mines one more block and stops cleanly (it could not while an
    orphaned client held the data directory's lock)."""
    done = subprocess.run(
        [sys.executable, "-m", "qoin", *_node_args(datadir, "--blocks", "1", "--workers", "1")],
        capture_output=True, text=True, timeout=RUN_S, env=_env(mark), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"^new head height=\d+", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_node_leaves_nothing(mark: str, easy_genesis: Path, sig: signal.Signals) -> None:
    """``qoin node`` SIGKILLed (its clients stop by their lifelines, and the consensus client
    stops its miner workers) or hung up (a clean stop, status 0); then a node restarts on the
    same data directory."""
    datadir = Path(mark) / "node"
    node = Child.start(
        "node", _node_args(datadir, "--workers", "2", "--genesis", str(easy_genesis))
    )
    try:
        node.wait_for(r"^new head height=", RUN_S)
        # the execution and consensus clients, two miner workers (and multiprocessing's helper)
        assert len(_left(mark)) >= 5, _left(mark)
        os.kill(node.proc.pid, sig)
        code = node.finish(time.monotonic() + GONE_S)
        if sig is signal.SIGHUP:
            assert code == 0, node.tail()
            assert "stopping" in node.tail() and "Traceback" not in node.tail()
        _await_none_left(mark)
    finally:
        node.stop(5)
    _mines_again(mark, datadir)


@pytest.mark.slow
def test_node_output_closed_then_ctrl_c(mark: str, easy_genesis: Path) -> None:
    """``qoin node 2>&1 | head -1``, then Ctrl-C: the stop is clean (status 0), nothing is
    left, and the chain continues."""
    datadir = Path(mark) / "node"
    args = _node_args(datadir, "--workers", "1", "--genesis", str(easy_genesis))
    piped = Piped(mark, args, both=True)
    try:
        piped.read_until(r"^new head height=")
        piped.close_reader()
        piped.await_output_dropped(1)
        piped.proc.send_signal(signal.SIGINT)
        assert piped.proc.wait(GONE_S) == 0
        _await_none_left(mark)
    finally:
        piped.end()
    _mines_again(mark, datadir)


@pytest.mark.slow
def test_node_stopped_at_its_password_prompt_gives_the_terminal_back(
    mark: str, easy_genesis: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``qoin node --mine --coinbase ADDRESS`` on a terminal: its consensus client turns the echo
    off to ask for the key's password; a Ctrl-C then stops it (it dies of SIGTERM, unable to
    turn the echo back on): the node puts the terminal's settings back."""
    monkeypatch.delenv("QOIN_PASSWORD", raising=False)
    made = subprocess.run(
        [sys.executable, "-m", "qoin", "keys", "new"], capture_output=True, text=True,
        timeout=RUN_S, env={**_env(mark), "QOIN_PASSWORD": "secret"}, check=True,
    )  # fmt: skip
    address = made.stdout.split()[0]
    master, terminal = os.openpty()
    try:
        args = _node_args(
            Path(mark) / "node", "--coinbase", address, "--genesis", str(easy_genesis)
        )
        node = Child.start("node", args, stdin=terminal)
        try:
            wait_until(
                lambda: not termios.tcgetattr(terminal)[3] & termios.ECHO,
                RUN_S, 0.05, "the password prompt (echo off)",
            )  # fmt: skip
            node.proc.send_signal(signal.SIGINT)
            assert node.finish(time.monotonic() + GONE_S) == 0, node.tail()
            assert termios.tcgetattr(terminal)[3] & termios.ECHO, node.tail()
        finally:
            node.stop(5)
    finally:
        os.close(master)
        os.close(terminal)
    _await_none_left(mark)


# -- qoin devnet ----------------------------------------------------------------------------------


def _devnet_args(mark: str) -> list[str]:
    """``qoin devnet`` arguments, its data directory prepared with an easier genesis (a block in a
    fraction of a second, not seconds: the devnet reaches :data:`RUNNING` sooner)."""
    datadir = Path(mark) / "net"
    datadir.mkdir(parents=True, exist_ok=True)
    write_easy_genesis(datadir / "genesis.json", attempts=DEVNET_ATTEMPTS)
    return ["devnet", *SMALL, "--datadir", str(datadir)]


@pytest.mark.slow
def test_devnet_killed_leaves_nothing(mark: str) -> None:
    devnet = Child.start("devnet", _devnet_args(mark))
    try:
        devnet.wait_for(RUNNING, RUN_S)
        # two clients per node, the miner's worker (and multiprocessing's helper)
        assert len(_left(mark)) >= 5, _left(mark)
        os.kill(devnet.proc.pid, signal.SIGKILL)
        _await_none_left(mark)
    finally:
        devnet.stop(5)


@pytest.mark.slow
def test_devnet_hung_up_stops_cleanly(mark: str) -> None:
    devnet = Child.start("devnet", _devnet_args(mark))
    try:
        devnet.wait_for(RUNNING, RUN_S)
        devnet.proc.send_signal(signal.SIGHUP)
        assert devnet.finish(time.monotonic() + GONE_S) == 0, devnet.tail()
        output = "".join(line.text for line in read_to_end(devnet))
        assert "stopping (signal)" in output and "Traceback" not in output
        assert re.search(r"^stopped: all nodes at height", output, re.MULTILINE), output
        _await_none_left(mark)
    finally:
        devnet.stop(5)


@pytest.mark.slow
@pytest.mark.parametrize("both", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_devnet_output_closed_then_ctrl_c(mark: str, both: bool) -> None:
    """``qoin devnet | head -1`` (and ``2>&1 | tee`` whose tee dies), then Ctrl-C: a stop as
    clean as on a terminal (status 0, nothing left, no traceback)."""
    piped = Piped(mark, _devnet_args(mark), both)
    try:
        piped.read_until(RUNNING)  # the live view is on stdout
        piped.close_reader()
        piped.await_output_dropped(1)  # it wrote again, and its stdout became /dev/null
        piped.proc.send_signal(signal.SIGINT)
        assert piped.proc.wait(GONE_S) == 0, piped.errors()
        _await_none_left(mark)
        if not both:
            errors = piped.errors()
            assert "stopping (signal)" in errors and "Traceback" not in errors, errors
    finally:
        piped.end()


class Piped:
    """``qoin ARGS | head``: stdout (with ``both``, stderr too) into a pipe this test reads and
    then closes, as a ``head`` that exits; otherwise stderr into a pipe of its own, read to the
    end by a thread."""

    def __init__(self, mark: str, args: list[str], both: bool) -> None:
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qoin", *args],
                stdout=write_end,
                stderr=write_end if both else subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=_env(mark),
            )
        finally:
            os.close(write_end)
        self.reader: int | None = read_end
        self._errors: list[bytes] = []
        self._thread: threading.Thread | None = None
        if self.proc.stderr is not None:
            self._thread = threading.Thread(target=self._collect, daemon=True)
            self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        self._errors.extend(self.proc.stderr)

    def read_until(self, pattern: str, timeout: float = RUN_S) -> None:
        """Read the pipe (never blocked in a read, so closing it later is a real close) until
        a line matches ``pattern``."""
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        seen = ""
        while not re.search(pattern, seen, re.MULTILINE):
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in {timeout} s:\n{seen[-4000:]}"
            ready, _, _ = select.select([self.reader], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.reader, 65536)
                assert chunk, f"the output ended:\n{seen[-4000:]}{self.errors()}"
                seen = (seen + chunk.decode(errors="replace"))[-65536:]

    def close_reader(self) -> None:
        assert self.reader is not None
        os.close(self.reader)
        self.reader = None

    def await_output_dropped(self, fd: int) -> None:
        """Until the process's ``fd`` is ``/dev/null``: it wrote to the closed pipe and put
        ``/dev/null`` in its place."""
        target = f"/proc/{self.proc.pid}/fd/{fd}"
        wait_until(lambda: os.readlink(target) == os.devnull, RUN_S, 0.05, f"{target} dropped")

    def errors(self) -> str:
        if self._thread is not None:
            self._thread.join(0 if self.proc.poll() is None else 10)
        return b"".join(self._errors).decode(errors="replace")

    def end(self) -> None:
        if self.reader is not None:
            self.close_reader()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
