"""The execution layer: accounts, transaction execution, witnesses, mempool."""
