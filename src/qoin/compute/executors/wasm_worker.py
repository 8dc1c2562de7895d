"""The wasm executor's worker process: runs one WASI module with wasmtime, as
:mod:`qoin.compute.executors.wasm` asks, and reports how it ended.

Run as a script (``python -I wasm_worker.py CONFIG REPORT_FD``), so that it imports nothing but
the standard library and wasmtime and starts quickly. ``CONFIG`` is a JSON file: ``module`` (a
host path), ``argv``, ``env`` (name/value pairs), ``preopens`` (host, guest, writable), ``fuel``,
``memory`` (bytes a linear memory may grow to), ``timeout`` (seconds). The module's stdout and
stderr are this process's. Reports are JSON lines on ``REPORT_FD``: ``{"started": T}`` just before
the module's ``_start`` runs, then ``{"status": "exit", "code": N}``, ``{"status": "trap",
"trap": CODE, "message": M}`` or ``{"status": "error", "message": M}`` (the module could not be
loaded) with ``started``, ``ended`` (``time.monotonic()``, the same clock as the provider's),
``cpu`` (seconds), ``fuel`` (consumed; absent when an interruption lost the count) and
``memory_bytes`` (the size of its memory at the end). Anything on stdin, or its end, interrupts
the module (the provider stopping it), as does the timeout, both through wasmtime's epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import wasmtime

MAX_CONFIG = 4 << 20
MAX_MESSAGE = 2000


def main(config_path: str, report_fd: int) -> int:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails instead
    with os.fdopen(report_fd, "w") as report:
        try:
            with open(config_path, encoding="utf-8") as file:
                config = json.loads(file.read(MAX_CONFIG))
            outcome = run(config, report)
        except Exception as exc:  # reported to the provider, which says why the job failed
            outcome = {"status": "error", "message": f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]}
        report.write(json.dumps(outcome) + "\n")
    return 0


def run(config: dict[str, Any], report: Any) -> dict[str, Any]:
    """Load the module and run its ``_start``; how it ended."""
    settings = wasmtime.Config()
    settings.consume_fuel = True
    settings.epoch_interruption = True
    engine = wasmtime.Engine(settings)
    fuel = int(config["fuel"])
    try:
        store, instance, start = load(engine, config, fuel)
    except wasmtime.WasmtimeError as exc:
        return {"status": "error", "message": str(exc)[:MAX_MESSAGE]}
    if not isinstance(start, wasmtime.Func):
        return {"status": "error", "message": "the module exports no _start function"}

    def on_stdin() -> None:
        with contextlib.suppress(OSError):
            os.read(0, 1)
        engine.increment_epoch()

    timer = threading.Timer(float(config["timeout"]), engine.increment_epoch)
    timer.daemon = True
    threading.Thread(target=on_stdin, daemon=True).start()
    started = time.monotonic()
    report.write(json.dumps({"started": started}) + "\n")
    report.flush()
    cpu0 = time.process_time()
    timer.start()
    outcome = execute(store, start)
    outcome.update(started=started, ended=time.monotonic(), cpu=time.process_time() - cpu0)
    timer.cancel()
    memory = instance.exports(store).get("memory")
    outcome["memory_bytes"] = memory.data_len(store) if isinstance(memory, wasmtime.Memory) else 0
    if outcome.get("trap") != "INTERRUPT":  # wasmtime loses the count on an epoch interrupt
        outcome["fuel"] = fuel - store.get_fuel()
    return outcome


def load(
    engine: wasmtime.Engine, config: dict[str, Any], fuel: int
) -> tuple[wasmtime.Store, wasmtime.Instance, object]:
    """The module compiled and instantiated with WASI as ``config`` says; its ``_start``."""
    module = wasmtime.Module.from_file(engine, config["module"])
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = config["argv"]
    wasi.env = [(name, value) for name, value in config["env"]]
    for host, guest, writable in config["preopens"]:
        wasi.preopen_dir(host, guest, writable)
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    store.set_limits(
        memory_size=int(config["memory"]),
        table_elements=int(config["table_elements"]),
        instances=1,
        tables=int(config["tables"]),
        memories=1,
    )
    store.set_fuel(fuel)
    store.set_epoch_deadline(1)
    instance = linker.instantiate(store, module)
    return store, instance, instance.exports(store).get("_start")


def execute(store: wasmtime.Store, start: wasmtime.Func) -> dict[str, Any]:
    """Call ``_start``: how it ended (exit, trap)."""
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        return {"status": "exit", "code": exc.code}
    except wasmtime.Trap as exc:
        code = exc.trap_code
        name = code.name if code is not None else ""
        return {"status": "trap", "trap": name, "message": str(exc)[:MAX_MESSAGE]}
    except wasmtime.WasmtimeError as exc:
        return {"status": "trap", "trap": "", "message": str(exc)[:MAX_MESSAGE]}
    return {"status": "exit", "code": 0}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
