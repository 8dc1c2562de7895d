"""The consensus client: block store, fork choice, mining, and execution clients checked by sampling."""
