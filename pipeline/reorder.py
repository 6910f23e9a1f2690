"""Put one stream, split over several workers, back into frame order (fan-in).

With `--detect-workers N` each detection worker gets some of the frames and sends its
results on its own edge, in increasing frame order; the lift stage reads all N edges. A
`Reorder` releases their messages in increasing `frame_id`, waiting a bounded time for an
earlier frame that may still be on its way, and drops (and counts) a frame that arrives
after a later one was released, so a slow worker never stalls the stream.

A buffered frame is released as soon as it is safe, without waiting:
- it is the next frame id after the last one released, or
- every other input has a later message buffered or has ended (each input is in order, so
  nothing earlier can come);
otherwise once it has waited `wait_s`. Frame ids missing because the source dropped them
(latest-wins edges) cost at most `wait_s` each time, and only when some worker is idle.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class Reorder:
    """Merge `inputs` streams, each in increasing frame order, into one (see module doc).

    `push(input_index, frame_id, item, now_s)`, then `pop_ready(now_s) -> [item, ...]` in
    frame order; `end(input_index)` when an input's stream has ended; `timeout_s(now_s)`
    says when pop_ready should be called again at the latest. Counters: `released`,
    `dropped_late` (arrived after a later frame was released, or a repeated id).
    """

    def __init__(self, inputs: int, wait_s: float) -> None:
        if inputs < 1:
            raise ValueError(f"Reorder needs at least one input, got {inputs}")
        if wait_s <= 0:
            raise ValueError(f"reorder wait must be > 0 s, got {wait_s}")
        self.inputs = inputs
        self.wait_s = wait_s
        self._heap: list[tuple[int, int, float, int, Any]] = []
        self._seq = itertools.count()  # ties (a repeated id) keep arrival order
        self._buffered = [0] * inputs
        self._ended = [False] * inputs
        self.last_released: int | None = None
        self.released = 0
        self.dropped_late = 0

    def push(self, input_index: int, frame_id: int, item: Any, now_s: float) -> bool:
        """Buffer one message; False (and counted) if its frame is already too late."""
        if self.last_released is not None and frame_id <= self.last_released:
            self.dropped_late += 1
            return False
        heapq.heappush(self._heap, (frame_id, next(self._seq), now_s, input_index, item))
        self._buffered[input_index] += 1
        return True

    def end(self, input_index: int) -> None:
        """That input will send nothing more."""
        self._ended[input_index] = True

    @property
    def done(self) -> bool:
        """Every input has ended and everything has been released."""
        return all(self._ended) and not self._heap

    @property
    def buffered(self) -> int:
        return len(self._heap)

    def _safe(self, frame_id: int, input_index: int) -> bool:
        if self.last_released is not None and frame_id == self.last_released + 1:
            return True
        return all(
            self._buffered[j] > 0 or self._ended[j]
            for j in range(self.inputs) if j != input_index
        )

    def pop_ready(self, now_s: float) -> list[Any]:
        """The messages that may go now, in increasing frame order."""
        out = []
        while self._heap:
            frame_id, _, t_in, index, item = self._heap[0]
            if self.last_released is not None and frame_id <= self.last_released:
                heapq.heappop(self._heap)  # a repeated id behind its twin
                self._buffered[index] -= 1
                self.dropped_late += 1
                continue
            if not (self._safe(frame_id, index) or now_s - t_in >= self.wait_s):
                break
            heapq.heappop(self._heap)
            self._buffered[index] -= 1
            self.last_released = frame_id
            self.released += 1
            out.append(item)
        return out

    def timeout_s(self, now_s: float) -> float | None:
        """Seconds until the oldest held message must go (None: nothing held)."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][2] + self.wait_s - now_s)
