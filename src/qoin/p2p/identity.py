"""A node's p2p identity: a hybrid key pair kept in its data directory (created on first start).

The node id is the key's address. The file holds the secret key in the clear, readable by its
owner only, like a TLS server key: a node must restart unattended, and the key guards no funds,
only the node's reputation with its peers.
"""

from __future__ import annotations

import json
from pathlib import Path

from qoin.crypto.hybrid import HybridKeyPair, HybridPublicKey, generate_keypair
from qoin.errors import QoinError
from qoin.files import write_atomically

NODE_KEY_FILE = "p2p-node-key.json"
MAX_NODE_KEY_BYTES = 64 * 1024


class NodeKeyError(QoinError):
    """The node key file cannot be read or written."""


def load_or_create_node_key(path: Path) -> HybridKeyPair:
    """The key pair in ``path``; a new one (saved there, mode 0600) if the file does not exist."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_NODE_KEY_BYTES + 1)
    except FileNotFoundError:
        keypair = generate_keypair()
        text = json.dumps(
            {"public": keypair.public.encode().hex(), "secret": keypair.encode_secret().hex()}
        )
        try:
            write_atomically(path, (text + "\n").encode(), mode=0o600)
        except OSError as exc:
            raise NodeKeyError(f"cannot write the node key {path}: {exc}") from exc
        return keypair
    except OSError as exc:
        raise NodeKeyError(f"cannot read the node key {path}: {exc}") from exc
    try:
        if len(data) > MAX_NODE_KEY_BYTES:
            raise ValueError(f"larger than {MAX_NODE_KEY_BYTES} bytes")
        obj = json.loads(data)
        public = HybridPublicKey.decode(bytes.fromhex(obj["public"]))
        return HybridKeyPair.from_secret(public, bytes.fromhex(obj["secret"]))
    except (ValueError, KeyError, TypeError, QoinError) as exc:
        raise NodeKeyError(
            f"the node key {path} is damaged ({exc}); remove it to start with a new node id"
        ) from exc
