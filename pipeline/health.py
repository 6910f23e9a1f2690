"""Keeping a run alive: restart budget with back-off, heartbeats, counted rejections.

Pure bookkeeping (no sockets, no processes), so the supervisor and the runner stay small
and the rules can be tested on their own:

- `RestartBudget`: a stage that died is restarted after a back-off that doubles with each
  recent restart (`backoff_initial_s` ... `backoff_max_s`); more than `max_restarts`
  within `window_s` means something is wrong for good, and the run stops with a report.
- `Liveness`: each running stage sends a heartbeat from its main loop about every
  `HEARTBEAT_INTERVAL_S`, with how long its current `process()`/`produce()` call has been
  running (`busy_s`). A stage is stuck when no beat arrived for `timeout_s`, or when one
  call has been busy for longer than that (a loop that still beats but never finishes).
- `RejectCounter`: a stage's malformed inputs, counted per kind, logged once per kind.

All times are `time.monotonic()` seconds, passed in by the caller.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: how often a running stage reports that it is alive, s
HEARTBEAT_INTERVAL_S: float = 0.25


@dataclass
class RestartBudget:
    """Decides whether and when a dead stage is restarted (one per stage).

    `on_death(now, ran_s)` -> seconds to wait before restarting, or None when the budget is
    spent (more than `max_restarts` deaths within the last `window_s`). The wait doubles with
    each recent death (a crash loop), from `backoff_initial_s` up to `backoff_max_s`, except
    after a process that had run `stable_s` or longer: that one was not crash-looping (it
    was killed, or met one bad input), so it is back after the initial wait, as systemd and
    Kubernetes reset their back-off after a run that held.
    """

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    stable_s: float = 10.0
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0  # over the whole run

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0:
            raise ValueError(
                f"max_restarts must be >= 0 and window_s > 0, got {self.max_restarts}, "
                f"{self.window_s}"
            )
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                "need 0 <= backoff_initial_s <= backoff_max_s, got "
                f"{self.backoff_initial_s}, {self.backoff_max_s}"
            )

    def recent(self, now: float) -> int:
        """Deaths within the window ending at `now`."""
        while self.deaths and now - self.deaths[0] > self.window_s:
            self.deaths.popleft()
        return len(self.deaths)

    def on_death(self, now: float, ran_s: float | None = None) -> float | None:
        """Record a death at `now` of a process that had run `ran_s` seconds (None: unknown);
        the back-off before the restart, None to give up."""
        self.deaths.append(now)
        n = self.recent(now)
        if n > self.max_restarts:
            return None
        self.restarts += 1
        if ran_s is not None and ran_s >= self.stable_s:
            return self.backoff_initial_s
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** (n - 1))

    def describe(self, now: float) -> str:
        return (f"{self.recent(now)} deaths in the last {self.window_s:.0f} s "
                f"(at most {self.max_restarts} are restarted)")


class Liveness:
    """Heartbeat bookkeeping for the running stages (see module docstring)."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= HEARTBEAT_INTERVAL_S:
            raise ValueError(
                f"heartbeat timeout {timeout_s} s must be longer than the beat interval "
                f"{HEARTBEAT_INTERVAL_S} s"
            )
        self.timeout_s = timeout_s
        self._last: dict[str, float] = {}
        self._busy: dict[str, float] = {}

    def start(self, stage: str, now: float) -> None:
        """Begin watching `stage` (after it was told to go); counts as a beat."""
        self._last[stage] = now
        self._busy[stage] = 0.0

    def forget(self, stage: str) -> None:
        """Stop watching `stage` (it exited, or is being restarted)."""
        self._last.pop(stage, None)
        self._busy.pop(stage, None)

    def beat(self, stage: str, now: float, busy_s: float = 0.0) -> None:
        """A heartbeat from `stage`: its current call has been running for busy_s."""
        if stage in self._last:
            self._last[stage] = now
            self._busy[stage] = max(0.0, float(busy_s))

    def stuck(self, now: float) -> list[tuple[str, str]]:
        """(stage, why) for every watched stage that is stuck at `now`."""
        out = []
        for stage, last in self._last.items():
            silent = now - last
            busy = self._busy[stage] + silent
            if silent > self.timeout_s:
                out.append((stage, f"no heartbeat for {silent:.1f} s"))
            elif self._busy[stage] > 0 and busy > self.timeout_s:
                out.append((stage, f"one call busy for {busy:.1f} s"))
        return out


class RejectCounter:
    """Counts rejected inputs per kind; logs the first of each kind only.

    kind: a short stable label ("schema", "type", "transport"); detail: the first example's
    message, which is logged.
    """

    def __init__(self, owner: str, logger: logging.Logger | None = None) -> None:
        self.owner = owner
        self.counts: collections.Counter[str] = collections.Counter()
        self._log = logger or log

    def reject(self, kind: str, detail: str) -> None:
        if self.counts[kind] == 0:
            self._log.warning(
                "%s: rejected a malformed input (%s: %s); further ones of this kind are only "
                "counted", self.owner, kind, detail[:300],
            )
        self.counts[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
