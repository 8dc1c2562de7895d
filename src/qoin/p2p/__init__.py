"""Peer-to-peer networking: the post-quantum encrypted transport (gossip and sync build on it)."""
