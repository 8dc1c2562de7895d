"""The compute provider daemon (docs/spec/compute.md §5): its HTTP and WebSocket API
(:mod:`~qoin.compute.provider.server`), the life of one job (:mod:`~qoin.compute.provider.jobs`),
the mediator's re-runs and verdicts (:mod:`~qoin.compute.provider.mediator`) and the daemon that
follows the chain (:mod:`~qoin.compute.provider.daemon`)."""
