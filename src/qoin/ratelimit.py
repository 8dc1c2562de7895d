"""Token buckets: the node's one rate limiter (inbound p2p handshakes, engine calls served to
peers and the refusals they get, fraud reports judged, bans of strangers, a remote execution
client pacing its calls).

A bucket holds at most ``burst`` tokens and earns ``per_s`` more a second; each event takes one.
Time is the caller's (a monotonic clock, injected in tests), so a bucket does no I/O and is not
thread-safe: its owner serialises the calls (an event loop, or a lock).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``tokens`` of at most ``burst``, earning ``per_s`` a second since ``updated``."""

    burst: float
    per_s: float
    tokens: float
    updated: float
    """When the tokens were last counted, on the owner's clock."""

    @classmethod
    def full(cls, burst: float, per_s: float, now: float) -> TokenBucket:
        """A bucket that starts with its whole burst."""
        return cls(float(burst), float(per_s), float(burst), now)

    def refill(self, now: float) -> float:
        """Count the tokens earned since the last call (never above ``burst``); the tokens now."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.per_s)
        self.updated = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Take one token if there is a whole one; whether it was taken."""
        if self.refill(now) < 1:
            return False
        self.tokens -= 1
        return True

    def reserve(self, now: float) -> float:
        """Take one token, in advance if none is there: the seconds until it is earned (0 when it
        was there). The tokens go below zero by the callers waiting, so each waits its turn."""
        self.refill(now)
        self.tokens -= 1
        return -self.tokens / self.per_s if self.tokens < 0 else 0.0
