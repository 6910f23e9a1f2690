"""The Stage API every file in stages/ implements (fixed in docs/DESIGN.md).

A stage is a plain object with a fixed life: `open()` in its own process, then
`process(msg)` per message (`produce()` for a source, `consume(msg)` for a sink), then
`close()`. The framework (pipeline/runner.py) receives, decodes, stamps
`(name, t_in_ns, t_out_ns)`, encodes and sends; stages never touch internal sockets, so a
test may call `open/process/close` in-process.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline.schema import Message


class EndOfStream(Exception):
    """Raised by `Source.produce()` when the source has no more frames (end of a video)."""


class Stage:
    """One processing step. Subclasses set `name`, `inputs` and `outputs` (message classes)."""

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[type, ...]] = ()
    outputs: ClassVar[tuple[type, ...]] = ()

    def __init__(self, config: Any) -> None:
        """config: this stage's own frozen dataclass from pipeline/config.py."""
        self.config = config

    def open(self) -> None:
        """Load models, open devices. Runs in the stage's own process, before the first message."""

    def process(self, msg: Message) -> Message | None:
        """One input message -> one output message, or None for "nothing to send"."""
        raise NotImplementedError(f"{type(self).__name__} must implement process(msg)")

    def close(self) -> None:
        """Release what open() took. Called once, also after an error."""


class Source(Stage):
    """A stage with no inputs: the framework calls `produce()` in a loop."""

    def produce(self) -> Message | None:
        """The next message (with frame_id and t_capture_ns set), None to skip a turn.

        Raise EndOfStream when done. A source may block (e.g. to pace a video) but should
        return within ~100 ms so a stop request is seen promptly.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement produce()")

    def resume(self, after_frame_id: int, after_t_capture_ns: int, *,
               lossless: bool = False) -> None:
        """Called before open() when this process replaces one that died after producing
        frame `after_frame_id` (captured at `after_t_capture_ns`, CLOCK_MONOTONIC): go on
        from there, so frame ids keep increasing. Newest frame wins (`lossless` False): the
        frames missed while it was down are skipped and show as a gap. Lossless (every
        frame asked for): `after_frame_id` is the last frame known delivered; go on with
        the very next one, skipping nothing. Default: nothing (ids start again from
        whatever produce() makes)."""

    def counters(self) -> dict[str, Any]:
        """Counts for the end-of-run report (msgpack-able; in the heartbeat and the
        stage's stats as "source"); see stages/capture.py. Default: none."""
        return {}


class Sink(Stage):
    """A stage with no internal outputs (it publishes to the outside world itself).

    The framework appends this stage's stamp (t_out_ns = the moment it hands the message
    over) before calling `consume(msg)`, so what a sink publishes carries every stamp.
    """

    def consume(self, msg: Message) -> None:
        """Deliver one message to the outside (e.g. publish it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement consume(msg)")
