"""The one process helper: start a child process tied to this process's life, read its output with
the time each line arrived, wait for a ready line or a ready file, stop it within a bounded grace;
and the rules every ``qoin`` process lives by: the signals that stop it (:func:`stop_on_signals`)
and an output that may close under it (:func:`forgive_closed_output`). Used by the node supervisor,
the devnet, the miner, the benchmarks and the tests.

A child:

* runs in a session of its own, so a terminal's Ctrl-C or hang-up reaches only its parent, which
  stops it;
* has a *lifeline* (Linux): the kernel sends it SIGTERM (a clean stop for a ``qoin`` process) when
  its parent dies, however the parent ends, SIGKILL included. ``prctl(PR_SET_PDEATHSIG)`` is set in
  the child between fork and exec, then the child checks that its parent is still the process
  that forked it, and exits at once if not (the parent died before the lifeline was set). The
  kernel sends the signal when the *thread* that forked the child ends, not the process, so
  children are forked only from the main thread or from a spawning thread that lives as long as
  the process (:func:`on_lasting_thread`). The miner's worker processes set the same lifeline as
  their first step (:func:`lifeline`);
* has its output read as it comes by a thread per pipe, so a line's arrival time
  (``time.perf_counter()``) is when the child wrote it, to within the pipe's latency. Its stdout and
  stderr are one pipe, unless they are told apart (:attr:`Output.split`) or forwarded to ours
  (:attr:`Output.forward`, as ``qoin node`` shows its clients' output); lines can also be appended
  to a log file, given to a callback and watched for the first match of a pattern. Lines are
  bounded in length (longer ones are cut into pieces) and decoded as UTF-8 whatever the child
  writes. A short-lived child's lines are all kept for :meth:`Child.wait_for`; a long-running one
  keeps only its last lines and its watched matches (:attr:`Output.keep`), so its memory stays
  bounded;
* is stopped with SIGTERM, a bounded wait, SIGKILL, and SIGKILL to whatever is left of its process
  group (a grandchild it could not stop).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import errno
import functools
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, TypeVar

from qoin.errors import QoinError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

T = TypeVar("T")

START_TIMEOUT_S = 60.0
"""How long a child may take to print what is waited for by default."""
STOP_TIMEOUT_S = 30.0
"""How long a child may take to stop after SIGTERM before it is killed."""
READ_CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
"""Characters of one output line; a longer line is cut into pieces of this length."""
TAIL_LINES = 100
"""Lines kept for :meth:`Child.tail` (every line too, unless :attr:`Output.keep` is False)."""
OUTPUT_TAIL = 4_000
"""Characters of a child's output quoted when it fails."""
MAX_READY_FILE = 64 * 1024
READER_JOIN_S = 5.0
"""How long the output readers may take to finish once a child was stopped."""
POLL_S = 0.2
PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 70
"""A child's exit status when its parent died before the lifeline was set."""
CLOSED_OUTPUT = frozenset({errno.EPIPE, errno.EIO, errno.ECONNRESET, errno.EBADF})
"""Write errors that mean the output is gone (a reader that exited, a closed terminal)."""


class ChildFailed(QoinError):
    """A child exited, or did not print (or write) what was expected in time."""


@dataclass(frozen=True)
class Line:
    """One output line of a child and when it was read."""

    at: float
    """``time.perf_counter()`` when the line was read."""
    text: str
    stderr: bool = False
    """It came from the child's stderr (only told apart with :attr:`Output.split`)."""


@dataclass(frozen=True)
class Output:
    """What is done with a child's output lines, besides keeping the last ones for
    :meth:`Child.tail`."""

    keep: bool = True
    """Every line is kept in :attr:`Child.incoming` for :meth:`Child.wait_for`. Off for a child
    that runs for long: only its last lines and the first matches of :attr:`watch` are kept."""
    watch: tuple[str, ...] = ()
    """Patterns whose first matching line is kept, for :meth:`Child.first_match`."""
    log: Path | None = None
    """A file every line is appended to."""
    split: bool = False
    """The child's stdout and stderr are two pipes (:attr:`Line.stderr` tells them apart)."""
    forward: bool = False
    """Split, and copied to our stdout and stderr as they come (a prompt without a newline
    too)."""
    prefix: str = ""
    """Put before every forwarded line."""
    on_line: Callable[[Line], None] | None = None
    """Called with every line, on the reading thread."""


KEEP_ALL = Output()


def qoin_command(args: Sequence[str]) -> list[str]:
    """``qoin ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "qoin", *args]


class Child:
    """A running child process and its output (see the module docstring). Start one with
    :meth:`start` (``qoin ARGS``) or :meth:`spawn` (any command)."""

    def __init__(
        self, name: str, proc: subprocess.Popen[bytes], started_at: float, output: Output
    ) -> None:
        self.name = name
        self.proc = proc
        self.started_at = started_at
        """``time.perf_counter()`` just before the process was spawned."""
        self.output = output
        self.incoming: queue.Queue[Line | None] = queue.Queue()
        """Lines as they are read (with :attr:`Output.keep`), then None once the output ended."""
        self.seen: list[Line] = []
        """Lines taken from :attr:`incoming` by the waits so far."""
        self._watch = {pattern: re.compile(pattern) for pattern in output.watch}
        self._found: dict[str, tuple[re.Match[str], float]] = {}
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._changed = threading.Condition()
        self._ended = False
        self._open_pipes = 0
        self._log: IO[str] | None = None
        self._readers: list[threading.Thread] = []
        self._finished: int | None = None
        """The exit status once :meth:`finish` has run."""

    @classmethod
    def start(
        cls,
        name: str,
        args: Sequence[str],
        output: Output = KEEP_ALL,
        *,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Child:
        """Spawn ``qoin ARGS`` with this interpreter (see :meth:`spawn`)."""
        return cls.spawn(name, qoin_command(args), output, stdin=stdin)

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        output: Output = KEEP_ALL,
        *,
        stdin: int | None = subprocess.DEVNULL,
    ) -> Child:
        """Spawn ``argv`` in a session of its own, with a lifeline, its output read as it comes;
        ``stdin`` None: ours (e.g. for a password prompt)."""
        log = output.log.open("a", encoding="utf-8") if output.log is not None else None
        parent = os.getpid()

        def fork() -> subprocess.Popen[bytes]:
            return subprocess.Popen(  # noqa: S603 (a command of ours, not a shell)
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if output.split or output.forward else subprocess.STDOUT,
                stdin=stdin,
                start_new_session=True,
                # Only C calls and a comparison run between fork and exec (no lock is taken).
                preexec_fn=functools.partial(lifeline, parent, signal.SIGTERM),  # noqa: PLW1509
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        started = time.perf_counter()
        try:
            proc = on_lasting_thread(fork)
        except BaseException:
            if log is not None:
                log.close()
            raise
        child = cls(name, proc, started, output)
        child._log = log
        try:
            child._read(proc.stdout, sys.stdout if output.forward else None, stderr=False)
            if output.split or output.forward:
                child._read(proc.stderr, sys.stderr if output.forward else None, stderr=True)
        except BaseException:  # e.g. no thread to read with: the caller never gets the child
            proc.kill()
            child.finish(time.monotonic())
            raise
        return child

    def __repr__(self) -> str:
        return f"Child({self.name}, pid {self.proc.pid})"

    # -- reading ----------------------------------------------------------------------------------

    def _read(self, stream: IO[bytes] | None, forward_to: IO[str] | None, stderr: bool) -> None:
        if stream is None:  # never: Popen with PIPE sets it
            raise ChildFailed(f"no pipe to {self.name}'s output")
        self._open_pipes += 1
        reader = threading.Thread(
            target=self._pump,
            args=(stream, forward_to, stderr),
            name=f"{self.name} output",
            daemon=True,
        )
        self._readers.append(reader)
        reader.start()

    def _pump(self, stream: IO[bytes], forward_to: IO[str] | None, stderr: bool) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        forward = _Forward(forward_to, self.output.prefix) if forward_to is not None else None
        partial = ""
        try:
            while chunk := _read_chunk(stream):
                text = decoder.decode(chunk)
                if forward is not None:
                    forward.write(text)
                partial += text
                while (end := partial.find("\n")) >= 0 or len(partial) >= MAX_LINE:
                    cut = min(end + 1 if end >= 0 else MAX_LINE, MAX_LINE)
                    self._line(partial[:cut], stderr)
                    partial = partial[cut:]
            partial += decoder.decode(b"", final=True)
            if partial:
                self._line(partial, stderr)
        finally:
            stream.close()
            self._pipe_ended()

    def _line(self, text: str, stderr: bool) -> None:
        line = Line(time.perf_counter(), text, stderr)
        with self._changed:
            self._tail.append(text)
            for pattern, regex in self._watch.items():
                if pattern not in self._found and (found := regex.search(text)):
                    self._found[pattern] = (found, line.at)
            if self._log is not None:
                try:
                    self._log.write(text)
                    self._log.flush()
                except OSError:  # e.g. a full disk: the log stops, the child runs on
                    with contextlib.suppress(OSError):
                        self._log.close()
                    self._log = None
            self._changed.notify_all()
        if self.output.on_line is not None:
            self.output.on_line(line)
        if self.output.keep:
            self.incoming.put(line)

    def _pipe_ended(self) -> None:
        with self._changed:
            self._open_pipes -= 1
            if self._open_pipes > 0:
                return
            self._ended = True
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            self._changed.notify_all()
        self.incoming.put(None)

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT_S, after: int = 0
    ) -> tuple[int, re.Match[str], float]:
        """The first line from index ``after`` on (seen or coming) matching ``pattern``: its
        index, the match and its arrival time. :class:`ChildFailed` if the child exits or
        ``timeout`` passes first."""
        found = self.poll_for(pattern, timeout, after)
        if found is None:
            raise ChildFailed(f"{self.name}: no line matching {pattern!r} in {timeout} s")
        return found

    def poll_for(
        self, pattern: str, timeout: float, after: int = 0
    ) -> tuple[int, re.Match[str], float] | None:
        """Like :meth:`wait_for`, but None when ``timeout`` passes (the child exiting still
        raises)."""
        if not self.output.keep:
            raise ValueError(f"{self.name}'s lines are not kept: wait with first_match")
        regex = re.compile(pattern)
        index = after
        deadline = time.monotonic() + timeout
        while True:
            while index < len(self.seen):
                line = self.seen[index]
                if match := regex.search(line.text):
                    return index, match, line.at
                index += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line_or_end = self.incoming.get(timeout=min(left, POLL_S))
            except queue.Empty:
                continue
            if line_or_end is None:
                self.incoming.put(None)  # the end stays marked for later waits
                try:
                    ended = f"exited ({self.proc.wait(READER_JOIN_S)})"
                except subprocess.TimeoutExpired:
                    ended = "closed its output"
                raise ChildFailed(f"{self.name} {ended}:\n{self.tail()}")
            self.seen.append(line_or_end)

    def first_match(
        self, pattern: str, timeout: float = START_TIMEOUT_S, cancel: threading.Event | None = None
    ) -> tuple[re.Match[str], float] | None:
        """The first line matching ``pattern`` (one of :attr:`Output.watch`), whenever it came,
        and its arrival time; None if ``cancel`` is set first. :class:`ChildFailed` if the output
        ends (the child exited) or ``timeout`` passes first."""
        if pattern not in self._watch:
            raise ValueError(f"{pattern!r} is not watched in {self.name}'s output")
        deadline = time.monotonic() + timeout
        with self._changed:
            while pattern not in self._found:
                if cancel is not None and cancel.is_set():
                    return None
                if self._ended:
                    raise ChildFailed(f"{self.name} exited before it was ready{self.last_output()}")
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"{self.name} printed no line matching {pattern!r} within {timeout:.0f} s"
                        f"{self.last_output()}"
                    )
                self._changed.wait(POLL_S)
            return self._found[pattern]

    def ready_file(
        self, path: Path, timeout: float = START_TIMEOUT_S, cancel: threading.Event | None = None
    ) -> str | None:
        """The text of ``path`` once the child has written it whole (it ends with a newline; at
        most :data:`MAX_READY_FILE` bytes, UTF-8); None if ``cancel`` is set first.
        :class:`ChildFailed` if the child exits, ``timeout`` passes or the file is not valid."""
        deadline = time.monotonic() + timeout
        while cancel is None or not cancel.is_set():
            try:
                with path.open("rb") as file:
                    raw = file.read(MAX_READY_FILE + 1)
            except FileNotFoundError:
                raw = b""
            except OSError as exc:
                raise ChildFailed(f"{self.name}'s ready file {path}: {exc}") from None
            if len(raw) > MAX_READY_FILE:
                raise ChildFailed(f"{self.name}'s ready file {path} is over {MAX_READY_FILE} B")
            if raw.endswith(b"\n"):
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ChildFailed(f"{self.name}'s ready file {path} is not UTF-8") from None
            code = self.proc.poll()
            if code is not None:
                raise ChildFailed(
                    f"{self.name} exited ({code}) before writing {path}{self.last_output()}"
                )
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} did not write {path} within {timeout:.0f} s")
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return None

    def collect(self) -> list[Line]:
        """:attr:`seen` after taking every line already read from :attr:`incoming` (no wait)."""
        while True:
            try:
                line = self.incoming.get_nowait()
            except queue.Empty:
                return self.seen
            if line is None:
                self.incoming.put(None)  # the end stays marked for later waits
                return self.seen
            self.seen.append(line)

    def exited(self) -> int | None:
        """The exit status if the process has exited."""
        return self.proc.poll()

    def last_lines(self, count: int = TAIL_LINES) -> list[str]:
        """The last ``count`` lines read (at most :data:`TAIL_LINES`)."""
        with self._changed:
            return list(self._tail)[-count:] if count > 0 else []

    def tail(self) -> str:
        """The end of the output read so far (at most :data:`OUTPUT_TAIL` characters)."""
        return "".join(self.last_lines())[-OUTPUT_TAIL:]

    def last_output(self, count: int = 20) -> str:
        """``; its last output lines (LOG):`` and the last ``count`` lines, indented: for an error
        message."""
        where = f" ({self.output.log})" if self.output.log is not None else ""
        lines = "".join(f"\n  {line.rstrip()}" for line in self.last_lines(count))
        return f"; its last output lines{where}:{lines}"

    # -- stopping ---------------------------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM (if it still runs) without waiting."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def finish(self, deadline: float) -> int:
        """Wait until it exits (SIGKILL at ``deadline``, a ``time.monotonic()``), SIGKILL what is
        left of its process group, let the output readers end; the exit status. Once finished,
        a child is not waited for nor its group signalled again: its pid, and so the group id,
        may belong to another process by then."""
        if self._finished is not None:
            return self._finished
        try:
            code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            note(f"{self.name} (pid {self.proc.pid}) did not stop in time; killing it")
            self.proc.kill()
            code = self.proc.wait()
        kill_group(self.proc.pid)
        self._finished = code
        for reader in self._readers:
            reader.join(READER_JOIN_S)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` (:data:`STOP_TIMEOUT_S`); the exit status."""
        self.terminate()
        return self.finish(time.monotonic() + timeout)


def stop_all(children: list[Child], timeout: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM to every child at once, then wait for each (SIGKILL once ``timeout`` has passed);
    their exit statuses, in order. ``children`` is emptied."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    codes = [child.finish(deadline) for child in children]
    children.clear()
    return codes


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a child's process group once the child itself has exited (a
    grandchild it could not stop, e.g. because it was killed). The group id cannot be reused
    while any member is alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # empty: nothing outlived it
        os.killpg(pgid, signal.SIGKILL)


def _read_chunk(stream: IO[bytes]) -> bytes:
    """What the pipe holds now (at most :data:`READ_CHUNK` bytes; waits for some); ``b""`` at
    its end, or once it was closed under the reader."""
    try:
        chunk: bytes = stream.read1(READ_CHUNK)  # type: ignore[attr-defined]
    except (OSError, ValueError):  # closed under us: the output ended
        return b""
    return chunk


# -- the lifeline ---------------------------------------------------------------------------------


def _load_prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _load_prctl()  # loaded here: nothing is loaded between fork and exec


def lifeline(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """In a child (between fork and exec, or first thing in a worker process): unblock ``sig``,
    ask the kernel for it when our parent's forking thread ends, then exit at once (status
    :data:`EXIT_ORPHANED`) if the parent is no longer ``parent`` (the pid it had when it forked
    us: it died before the lifeline was set). Linux only; elsewhere nothing."""
    if _PRCTL is None:
        return
    # A signal mask survives fork and exec: a child forked by a thread that blocks ``sig`` would
    # keep the kernel's signal pending for ever.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (sig,))
    if _PRCTL(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


_spawner_jobs: queue.Queue[Callable[[], None]] = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def on_lasting_thread(work: Callable[[], T]) -> T:
    """Run ``work`` (which forks children with a lifeline) on a thread that lives as long as this
    process: the calling thread if it is the main thread, else one spawning thread kept for the
    purpose. The parent-death signal follows the forking *thread*: a child forked by a
    short-lived thread would be signalled when that thread ends."""
    if threading.current_thread() is threading.main_thread():
        return work()
    global _spawner  # noqa: PLW0603 (one spawning thread per process)
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawn_forever, name="qoin spawner", daemon=True)
            _spawner.start()
    done: Future[T] = Future()

    def job() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the waiting thread
            done.set_exception(exc)

    _spawner_jobs.put(job)
    return done.result()


def _spawn_forever() -> None:
    while True:
        _spawner_jobs.get()()


# -- signals and output ---------------------------------------------------------------------------


@contextmanager
def stop_on_signals(
    stop: Callable[[], None], signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM call ``stop`` (a long-running loop then finishes at its
    next poll) instead of raising at an arbitrary point, which could fall between a durable commit
    and the in-memory update that follows it. Yields the list of signals received. Handlers are set
    explicitly: a shell may start background jobs with SIGINT ignored. Call it on the main thread.

    ``stop`` runs on a thread of its own (:func:`_dispatch_signals`), woken by the signal's byte on
    Python's wakeup file descriptor, never in a Python signal handler: such a handler runs only on
    the main thread, and only once that thread runs Python code again, which a main thread blocked
    in a lock wait (``Event.wait()``) does not do when the kernel delivered the signal to another
    of the process's threads; and a handler that takes a lock (``Event.set``) deadlocks if the
    signal came while the main thread held it."""
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop()

    _start_dispatcher()
    with _dispatch_lock:
        for sig in signals:
            _dispatch.setdefault(sig, []).append(on_signal)
    wakeup = signal.set_wakeup_fd(_wakeup[1], warn_on_full_buffer=False)  # before the handlers
    previous = {sig: signal.signal(sig, _no_op) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(wakeup)
        with _dispatch_lock:
            for sig in signals:
                _dispatch[sig].remove(on_signal)


def _no_op(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of a signal :func:`stop_on_signals` handles: it only replaces the
    default action (the signal's byte on the wakeup fd does the work)."""


_dispatch: dict[int, list[Callable[[int], None]]] = {}
"""Per signal, the ``stop_on_signals`` callbacks in force, the innermost last."""
_dispatch_lock = threading.Lock()
_wakeup: tuple[int, int] = (-1, -1)
"""Python's signal wakeup pipe (read end, non-blocking write end) once the dispatcher runs."""


def _start_dispatcher() -> None:
    global _wakeup  # noqa: PLW0603 (one wakeup pipe and one dispatching thread per process)
    with _dispatch_lock:
        if _wakeup[0] >= 0:
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        _wakeup = (read_end, write_end)
    threading.Thread(
        target=_dispatch_signals, args=(read_end,), name="qoin signals", daemon=True
    ).start()


def _dispatch_signals(read_end: int) -> None:
    """Call the innermost callback of every signal whose byte the C-level handler wrote (on
    whichever thread the kernel delivered it to)."""
    while True:
        for signum in os.read(read_end, 64):
            with _dispatch_lock:
                callbacks = _dispatch.get(signum)
                callback = callbacks[-1] if callbacks else None
            if callback is None:
                continue
            try:
                callback(signum)
            except Exception as exc:  # the next signal must still be dispatched
                note(f"error: stopping on signal {signum} failed: {exc!r}")


class _ForgivingFile(io.RawIOBase):
    """An output file descriptor whose writes never fail for want of a reader: after the first
    write that finds the output gone (:data:`CLOSED_OUTPUT`), ``/dev/null`` takes its place, so
    that the rest of the output (Python's last flush at exit included) goes nowhere."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return os.isatty(self._fd)
        except OSError:
            return False

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            if exc.errno not in CLOSED_OUTPUT:
                raise
            _drop_output(self._fd)
        return len(view)


def _drop_output(fd: int) -> None:
    """Put ``/dev/null`` in the place of output ``fd``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def forgive_closed_output() -> None:
    """Make this process's stdout and stderr survive a closed output (a ``tee`` or ``head`` that
    exited, a closed terminal): the first write that fails sends the rest of that output to
    ``/dev/null`` instead of raising in whatever was being done, a shutdown included. Writes go
    straight to the file descriptors (no buffering). Streams that are not file descriptors (a
    test's captured output) are left alone."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(getattr(stream, "buffer", None), _ForgivingFile):
            continue
        try:
            fd = stream.fileno()
            stream.flush()
        except (AttributeError, OSError, ValueError):
            continue
        # A raw file under the text layer, as Python's own unbuffered stdio (``python -u``).
        forgiving = io.TextIOWrapper(  # type: ignore[type-var]
            _ForgivingFile(fd),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=True,
            write_through=True,
        )
        setattr(sys, name, forgiving)


def note(message: str) -> None:
    """Write one line on stderr; a closed stderr is no error."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


class _Forward:
    """Copies a child's output to one of our streams, ``prefix`` before each line; after a
    failed write (our output closed, in a process that does not forgive it) nothing more."""

    def __init__(self, stream: IO[str], prefix: str) -> None:
        self._stream = stream
        self._prefix = prefix
        self._at_line_start = True
        self._broken = False

    def write(self, text: str) -> None:
        if self._broken or not text:
            return
        if self._prefix:
            head = self._prefix if self._at_line_start else ""
            body = text[:-1].replace("\n", "\n" + self._prefix) + text[-1]
            text = head + body
        self._at_line_start = text.endswith("\n")
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._broken = True
