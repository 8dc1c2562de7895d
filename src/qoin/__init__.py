"""Qoin: a post-quantum proof-of-work blockchain node."""

__version__ = "0.1.0"
