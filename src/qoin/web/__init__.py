"""The node's web UI (docs/web.md): server-rendered jinja2 pages on 127.0.0.1 — explorer, wallet,
mining and network, storage, compute and AI, dapp sites — over the node's JSON-RPC.

:mod:`qoin.web.app` assembles the Starlette app from each page module's ``routes(ui)``;
:mod:`qoin.web.ui` is the context they share (RPC clients, templates, sessions and their security
rules); :mod:`qoin.web.server` is the ``qoin web`` process.
"""
