"""Running the real ``qoin`` command in a subprocess, as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

DEVNET_PASSWORD = "devnet"


def run_qoin(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m qoin ARGS`` with no stdin; ``env`` is added to a copy of the environment from
    which ``QOIN_PASSWORD`` is removed (tests set it explicitly when they mean to)."""
    full_env = {k: v for k, v in os.environ.items() if k != "QOIN_PASSWORD"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qoin", *args],
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
