"""Qoin's AI jobs: datasets and models prepared and kept by the client, trained and run as ordinary
compute-market jobs in a provider's sandbox by a *runtime* (a Python venv with PyTorch and the job
program, :mod:`qoin.ai.job`) that the provider prepared (docs/ai.md).

Nothing here imports PyTorch: only the job program's modules that say so do, and they run inside
the runtime, never in the node or the markets.
"""
