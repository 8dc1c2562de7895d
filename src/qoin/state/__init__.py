"""Account state: the sparse Merkle tree and the store that keeps its nodes and versions."""
