"""The AI job program, run as ``python -m qoin_ai_job`` inside a runtime (docs/ai.md).

This package is copied into the runtime as the top-level package ``qoin_ai_job``: its modules
import each other relatively and nothing from ``qoin``. :mod:`.tensorfile` is pure Python (the
client uses it too); :mod:`.models` and :mod:`.train` import PyTorch.
"""
