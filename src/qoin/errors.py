"""The root of Qoin's typed exceptions.

Every validity failure raises a subclass of :class:`QoinError` whose message says what was wrong in
terms a user can act on. Consensus rules never use ``assert``.
"""


class QoinError(Exception):
    """Base class of every error Qoin raises on purpose."""
