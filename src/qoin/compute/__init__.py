"""The general compute market (docs/spec/compute.md): its genesis parameters
(:mod:`qoin.compute.params`), the canonical job spec and its hash (:mod:`qoin.compute.jobspec`), and
the client side of the ``compute-market`` actor (:mod:`qoin.compute.market`). The actor itself is
:mod:`qoin.actors.compute_market`.
"""
