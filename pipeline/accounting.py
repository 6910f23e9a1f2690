"""Every input accounted for: what became of the frames of a run, from the stages' counters.

At the end of a run the supervisor hands `account()` the stats of every process each stage
ran as (a stage restarted after a kill -9 ran as several: the counters of a killed one are
those of its last heartbeat) and logs the report's lines. For a file processed whole (edge
policy "lossless", a video or an image set), an input that did not come back as a pose is
lost, and the run exits EXIT_INPUTS_LOST (pipeline.supervisor) saying so on its last line.

    inputs       frames read from the video / images listed (the next frame id at the end)
    published    poses the output stage published (one per frame, people or not)
    skipped      inputs capture could not use, by reason: unreadable (an image OpenCV cannot
                 read), too_large (over the schema's hard size limit), truncated (frames a
                 video's header announces beyond its last readable one), restart (frames
                 passed over while capture restarted: newest frame wins only)
    dropped      frames replaced by a newer one on an edge (newest frame wins), or a worker's
                 frame that came after a later one ("late")
    rejected     messages a stage refused or could not process (pipeline.health)
    no_output    messages a stage's process() answered with nothing to send
    lost         what none of these explains: frames inside a stage when it was killed, or
                 counted only after a killed stage's last heartbeat
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the reasons capture gives (stages/capture.py SKIP_REASONS) and the two counted here
SKIP_ORDER: tuple[str, ...] = ("unreadable", "too_large", "truncated", "restart")


@dataclass(frozen=True)
class InputReport:
    """What became of a run's inputs (see module docstring). `whole`: the run was asked to
    process every input (lossless, a file source)."""

    source: str
    whole: bool
    inputs: int
    published: int
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ids: dict[str, list[int]] = field(default_factory=dict)
    dropped: int = 0
    rejected: int = 0
    repeated: int = 0
    no_output: int = 0

    @property
    def expected(self) -> int:
        """Inputs the source had: those read plus a truncated video's unreadable tail."""
        return self.inputs + self.skipped.get("truncated", 0)

    @property
    def missing(self) -> int:
        """Inputs that did not come back as a pose, for any reason."""
        return max(0, self.expected - self.published)

    @property
    def lost(self) -> int:
        """Missing inputs that no counter explains."""
        explained = sum(self.skipped.values()) + self.dropped + self.rejected + self.no_output
        return max(0, self.missing - explained)

    @property
    def inputs_lost(self) -> bool:
        """True when a run asked to process every input did not."""
        return self.whole and self.missing > 0

    def lines(self) -> list[str]:
        """The report for the log, one fact a line; the last line is the verdict."""
        kind = "frames" if self.source.startswith("video") else "inputs"
        out = [f"inputs: {self.inputs} {kind} read from {self.source}, {self.published} "
               f"published as poses"]
        for reason in SKIP_ORDER:
            n = self.skipped.get(reason, 0)
            if n:
                ids = self.skipped_ids.get(reason, [])
                named = f" (frame ids {_short(ids)})" if ids else ""
                out.append(f"skipped: {n} {_REASON_TEXT[reason]}{named}")
        if self.dropped:
            out.append(f"dropped: {self.dropped} (newest frame wins, or late from a worker)")
        if self.rejected:
            out.append(f"rejected: {self.rejected} (a stage refused or could not process "
                       "them; see the warnings above)")
        if self.no_output:
            out.append(f"no output: {self.no_output} (a stage had nothing to send on for them)")
        if self.lost:
            out.append(f"lost: {self.lost} (inside a stage that was killed or failed)")
        if self.inputs_lost:
            out.append(f"INPUTS LOST: {self.missing} of the {self.expected} inputs of "
                       f"{self.source} did not come back as poses (exit status 3)")
        elif self.whole:
            out.append(f"all {self.expected} inputs of {self.source} came back as poses")
        else:
            out.append(f"{self.published} of {self.expected} inputs published")
        return out


_REASON_TEXT = {
    "unreadable": "unreadable (not an image OpenCV can read)",
    "too_large": "too large (over the hard size limit even after scaling down)",
    "truncated": "beyond the end of a truncated video (announced by its header, unreadable)",
    "restart": "passed over while capture restarted (newest frame wins)",
}


def _short(ids: list[int], most: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", ... ({len(ids) - most} more)" if len(ids) > most else "")


def _n(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


def account(source: str, whole: bool, source_stats: Iterable[Mapping[str, Any]],
            sink_stats: Iterable[Mapping[str, Any]],
            all_stats: Iterable[Mapping[str, Any]]) -> InputReport:
    """The report from the stats dicts (pipeline.runner.StageRunner.stats) of every
    process of the source stage, of the sink stage, and of every stage (each process of
    each stage once, the source and sink included)."""
    inputs = 0
    skipped: dict[str, int] = {}
    ids: dict[str, set[int]] = {}
    announced = 0  # a truncated video: the frame count its header announces
    for stats in source_stats:
        src = stats.get("source") or {}
        inputs = max(inputs, _n(src, "next_id"))
        skipped["restart"] = skipped.get("restart", 0) + _n(src, "skipped_restart")
        for reason, listed in (src.get("skipped_ids") or {}).items():
            ids.setdefault(reason, set()).update(int(i) for i in listed)
        for reason, n in (src.get("skipped") or {}).items():
            # a restarted lossless capture may read a skipped input again: count ids once
            skipped[reason] = max(skipped.get(reason, 0), int(n), len(ids.get(reason, ())))
        if src.get("truncated"):
            announced = int(src["truncated"][1])
    if announced > inputs:
        skipped["truncated"] = announced - inputs
    published = sum(_n(s, "processed") for s in sink_stats)
    dropped = rejected = repeated = no_output = 0
    for stats in all_stats:
        dropped += _n(stats, "dropped_out") + _n(stats, "dropped_in") + _n(stats, "dropped_late")
        rejected += sum(int(v) for v in (stats.get("rejected") or {}).values())
        repeated += _n(stats, "repeated_in")
        no_output += _n(stats, "no_output")
    return InputReport(
        source=source, whole=whole, inputs=inputs, published=published,
        skipped={k: v for k, v in skipped.items() if v},
        skipped_ids={k: sorted(v) for k, v in ids.items() if v},
        dropped=dropped, rejected=rejected, repeated=repeated, no_output=no_output,
    )
