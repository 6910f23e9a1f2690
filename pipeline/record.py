"""Recording the published stream: the file format, its writer and reader, and the recorder.

    python -m pipeline.record [ENDPOINT] run.psrec            # until Ctrl-C / SIGTERM
    python -m pipeline.record tcp://127.0.0.1:5556 run.psrec --count 1000

`record(endpoint, path, stop_event)` is the same from Python (the `--record FILE` of
run_pipeline.py). The recorder is one more subscriber: the publisher never waits for it
(PUB drops for a subscriber that falls behind its high-water mark; the recorder asks for a
deep receive queue so that does not happen in practice) and it stores the ZeroMQ frames
exactly as received, so nothing is decoded or re-encoded.

File format (`.psrec`, version 1): a stream of msgpack objects, then an index.

    header   msgpack map: {"format": "posestream-recording", "version": 1,
             "endpoint": str, "topics": [str], "created_unix_ns": int,
             "t_start_ns": int (time.monotonic_ns() of the recorder), "schema_version": int}
    record*  msgpack array [t_recv_ns: int, [frame: bin, ...]]: one published message, its
             ZeroMQ frames as received (topic first, then pipeline.schema's frames), and
             time.monotonic_ns() at receipt
    index    msgpack map: {"index": 1, "count": N, "offsets": bin, "t_recv_ns": bin}, the byte
             offset of each record and its receive time, each N little-endian int64
    trailer  16 bytes: b"PSRINDEX" then the index's byte offset, little-endian uint64

The index is written when recording stops cleanly. A file without one (the recorder was
killed) is still readable: the reader scans the records and stops at a truncated last one.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import zmq
from tqdm import tqdm

from pipeline.config import OutputConfig
from pipeline.schema import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Message,
    SchemaError,
    Status,
    decode,
)
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

FORMAT_NAME = "posestream-recording"
FORMAT_VERSION = 1
TRAILER_MAGIC = b"PSRINDEX"
TRAILER = struct.Struct("<8sQ")  # magic, index offset
DEFAULT_ENDPOINT = OutputConfig().publish
#: most ZeroMQ frames one recorded message may have (topic + header + image)
MAX_FRAMES_PER_MESSAGE = 8


class RecordingError(ValueError):
    """A file that is not a readable posestream recording."""


@dataclass(frozen=True)
class RecordedMessage:
    """One published message: `frames` as received (topic first), `t_recv_ns` monotonic."""

    t_recv_ns: int
    frames: tuple[bytes, ...]

    @property
    def topic(self) -> bytes:
        return self.frames[0] if self.frames else b""

    def decode(self) -> Message:
        """The pipeline.schema message (the frames after the topic). Raises SchemaError."""
        return decode(list(self.frames[1:]))


def _bin_header(n: int) -> bytes:
    """msgpack bin format header for n bytes (bin 8/16/32)."""
    if n < 0x100:
        return struct.pack(">BB", 0xC4, n)
    if n < 0x10000:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


class RecordingWriter:
    """Writes a recording. Use as a context manager, or call `close()`: that writes the index.

    `write(t_recv_ns, frames)` appends one message; frames are bytes-like (zmq.Frame too) and
    are written straight to the file, not copied into a msgpack buffer.
    """

    def __init__(
        self, path: str | os.PathLike, endpoint: str = "", topics: Sequence[str] = ("",)
    ) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise RecordingError(f"cannot write recording {self.path}: {exc.strerror}") from exc
        self._packer = msgpack.Packer(use_bin_type=True)
        self._offsets: list[int] = []
        self._times: list[int] = []
        self.bytes_written = 0
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "endpoint": endpoint,
            "topics": list(topics),
            "created_unix_ns": time.time_ns(),
            "t_start_ns": time.monotonic_ns(),
            "schema_version": SCHEMA_VERSION,
        }
        self._write(self._packer.pack(header))

    def _write(self, data: Any) -> None:
        self._file.write(data)
        self.bytes_written += len(data) if isinstance(data, bytes) else memoryview(data).nbytes

    @property
    def count(self) -> int:
        """Messages written so far."""
        return len(self._offsets)

    def write(self, t_recv_ns: int, frames: Sequence[Any]) -> None:
        """Append one message: its ZeroMQ frames (topic first) and receive time (monotonic ns)."""
        if self._file.closed:
            raise RecordingError(f"{self.path}: write() after close()")
        self._offsets.append(self.bytes_written)
        self._times.append(int(t_recv_ns))
        self._write(self._packer.pack_array_header(2))
        self._write(self._packer.pack(int(t_recv_ns)))
        self._write(self._packer.pack_array_header(len(frames)))
        for frame in frames:
            buf = memoryview(getattr(frame, "buffer", frame)).cast("B")
            self._write(_bin_header(buf.nbytes))
            self._write(buf)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Write the index and trailer and close the file (idempotent)."""
        if self._file.closed:
            return
        index_offset = self.bytes_written
        index = {
            "index": 1,
            "count": len(self._offsets),
            "offsets": np.asarray(self._offsets, dtype="<i8").tobytes(),
            "t_recv_ns": np.asarray(self._times, dtype="<i8").tobytes(),
        }
        self._write(self._packer.pack(index))
        self._write(TRAILER.pack(TRAILER_MAGIC, index_offset))
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Recording:
    """Reads a recording: `len(rec)`, `for msg in rec` (RecordedMessage, in order), `rec[i]`.

    `header`: the file's header map. `complete`: True when the index was written (a clean
    stop). `t_recv_ns`: (N,) int64 receive times. Raises RecordingError for a file that is not
    a recording or is of an unknown version.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RecordingError(f"recording {self.path} not found")
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115
        try:
            unpacker = self._unpacker(0)
            try:
                header = unpacker.unpack()
            except Exception as exc:  # msgpack raises several unrelated types
                raise RecordingError(f"{self.path} is not a posestream recording: {exc}") from exc
            if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                raise RecordingError(
                    f"{self.path} is not a posestream recording (no {FORMAT_NAME!r} header)"
                )
            if header.get("version") != FORMAT_VERSION:
                raise RecordingError(
                    f"{self.path} is recording format version {header.get('version')!r}; this "
                    f"posestream reads version {FORMAT_VERSION}"
                )
            self.header: dict[str, Any] = header
            self._first_record = unpacker.tell()
            index = self._read_index()
            self.complete = index is not None
            if index is None:
                log.warning("%s has no index (recording did not stop cleanly); scanning it",
                            self.path)
                index = self._scan()
            self._offsets, self.t_recv_ns = index
        except BaseException:
            self._file.close()
            raise

    def _unpacker(self, offset: int) -> msgpack.Unpacker:
        self._file.seek(offset)
        return msgpack.Unpacker(
            self._file, raw=False, use_list=True, max_buffer_size=2 * MAX_MESSAGE_BYTES,
            strict_map_key=True,
        )

    def _read_index(self) -> tuple[np.ndarray, np.ndarray] | None:
        size = self._file.seek(0, io.SEEK_END)
        if size < TRAILER.size:
            return None
        self._file.seek(size - TRAILER.size)
        magic, offset = TRAILER.unpack(self._file.read(TRAILER.size))
        if magic != TRAILER_MAGIC or not self._first_record <= offset < size:
            return None
        try:
            index = self._unpacker(offset).unpack()
            n = int(index["count"])
            offsets = np.frombuffer(index["offsets"], dtype="<i8")
            times = np.frombuffer(index["t_recv_ns"], dtype="<i8")
        except Exception as exc:
            raise RecordingError(f"{self.path}: the index is damaged ({exc})") from exc
        if len(offsets) != n or len(times) != n:
            raise RecordingError(f"{self.path}: the index lists {n} records inconsistently")
        if n and not (offsets.min() >= self._first_record and offsets.max() < offset):
            raise RecordingError(f"{self.path}: the index points outside the records "
                                 f"(offsets {offsets.min()} to {offsets.max()})")
        return offsets, times

    def _scan(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and times of every complete record, reading the whole file."""
        unpacker = self._unpacker(self._first_record)
        offsets, times = [], []
        while True:
            offset = self._first_record + unpacker.tell()
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                break  # end of file, or a record cut short by a crash
            except Exception as exc:
                log.warning("%s: unreadable data at byte %d (%s); stopping there",
                            self.path, offset, exc)
                break
            if isinstance(obj, dict):  # an index without a valid trailer
                break
            offsets.append(offset)
            times.append(self._check_record(obj, offset)[0])
        return np.asarray(offsets, dtype=np.int64), np.asarray(times, dtype=np.int64)

    def _check_record(self, obj: Any, offset: int) -> tuple[int, tuple[bytes, ...]]:
        if (
            not isinstance(obj, list)
            or len(obj) != 2
            or not isinstance(obj[0], int)
            or not 0 <= obj[0] < 2**63  # a monotonic ns time (bench/fuzz.py found 2**64-1)
            or not isinstance(obj[1], list)
            or not 1 <= len(obj[1]) <= MAX_FRAMES_PER_MESSAGE
            or not all(isinstance(f, bytes) for f in obj[1])
        ):
            raise RecordingError(f"{self.path}: byte {offset} is not a recorded message")
        return obj[0], tuple(obj[1])

    def _unpack_at(self, unpacker: msgpack.Unpacker, offset: int) -> tuple[int, tuple[bytes, ...]]:
        try:
            obj = unpacker.unpack()
        except Exception as exc:  # msgpack raises several unrelated types
            raise RecordingError(
                f"{self.path}: the record at byte {offset} is damaged ({exc!r})"
            ) from exc
        return self._check_record(obj, offset)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> RecordedMessage:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path} has {len(self)} messages, no message {i}")
        offset = int(self._offsets[i])
        t, frames = self._unpack_at(self._unpacker(offset), offset)
        return RecordedMessage(t_recv_ns=t, frames=frames)

    def __iter__(self) -> Iterator[RecordedMessage]:
        if len(self) == 0:
            return
        unpacker = self._unpacker(int(self._offsets[0]))
        for offset in self._offsets:
            t, frames = self._unpack_at(unpacker, int(offset))
            yield RecordedMessage(t_recv_ns=t, frames=frames)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last message received."""
        return 0.0 if len(self) < 2 else float(self.t_recv_ns[-1] - self.t_recv_ns[0]) / 1e9

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RecordSummary:
    """What a recording run wrote: messages, bytes, and the path."""

    count: int
    bytes_written: int
    path: str


def record(
    endpoint: str,
    path: str | os.PathLike,
    stop_event: threading.Event | None = None,
    *,
    topics: Sequence[str] = ("",),
    max_messages: int | None = None,
    timeout_s: float | None = None,
    rcvhwm: int = 100_000,
    flush_interval_s: float = 1.0,
    progress: bool = False,
    until_end_of_stream: bool = False,
) -> RecordSummary:
    """Subscribe to `endpoint` and write every message on `topics` ("": all) to `path`.

    Stops when stop_event is set (a threading or multiprocessing Event), after max_messages,
    or after timeout_s without a message; messages already received by then are kept, and
    the index is written. The file is flushed every
    flush_interval_s, so a killed recorder loses at most that much. progress: show a tqdm
    counter of messages recorded. until_end_of_stream: also stop after the publisher's
    end-of-stream Status (topic "status", kind "info", text "end of stream"), which comes
    after its last pose: so a recording of a finished video holds every pose.
    """
    ctx = zmq.Context.instance()
    sock = open_socket(ctx, zmq.SUB, connect=endpoint, rcvhwm=rcvhwm)
    writer: RecordingWriter | None = None
    bar = tqdm(desc="recorded", unit="msg", total=max_messages, disable=not progress)
    try:
        # the file (with its header) exists before the publisher can see the subscription
        writer = RecordingWriter(path, endpoint=endpoint, topics=topics)
        writer.flush()
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        log.info("recording %s (topics %s) to %s", endpoint, list(topics), path)
        last_msg = last_flush = time.monotonic()
        ended = threading.Event()

        def drain() -> None:
            """Write every message already received (up to max_messages)."""
            while max_messages is None or writer.count < max_messages:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                writer.write(time.monotonic_ns(), frames)
                bar.update(1)
                if until_end_of_stream and _is_end_of_stream(frames):
                    ended.set()

        while (stop_event is None or not stop_event.is_set()) and not ended.is_set():
            if max_messages is not None and writer.count >= max_messages:
                break
            now = time.monotonic()
            if now - last_flush > flush_interval_s:
                writer.flush()
                last_flush = now
            if not sock.poll(100, zmq.POLLIN):
                if timeout_s is not None and now - last_msg > timeout_s:
                    break
                continue
            drain()
            last_msg = time.monotonic()
        drain()  # a stop request keeps what had already arrived
    finally:
        bar.close()
        sock.close(linger=0)
        if writer is not None:
            writer.close()
    log.info("recorded %d messages, %d bytes, to %s", writer.count, writer.bytes_written, path)
    return RecordSummary(count=writer.count, bytes_written=writer.bytes_written, path=str(path))


def _is_end_of_stream(frames: Sequence[Any]) -> bool:
    """True for the Status the output stage publishes after its last pose."""
    if bytes(frames[0]) != OutputConfig().status_topic.encode():
        return False
    try:
        msg = decode([bytes(f) for f in frames[1:]])
    except SchemaError:
        return False
    return isinstance(msg, Status) and msg.kind == "info" and msg.text == "end of stream"


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.record") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Record every message a posestream publisher sends, as received, to a "
        ".psrec file (replay it with `python -m pipeline.replay`, convert it with "
        "`python -m pipeline.export`). Stops on Ctrl-C or SIGTERM and writes the index.",
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"publisher to record (default {DEFAULT_ENDPOINT})")
    parser.add_argument("out", help="recording file to write, e.g. run.psrec")
    parser.add_argument("--topic", action="append", default=None,
                        help="record only this topic (repeatable; default: every topic)")
    parser.add_argument("--count", type=int, default=None, help="stop after N messages")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after this many seconds without a message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        summary = record(args.endpoint, args.out, stop, topics=args.topic or ("",),
                         max_messages=args.count, timeout_s=args.timeout, progress=True)
    except RecordingError as exc:
        print(f"record failed: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.count} messages, {summary.bytes_written} bytes -> {summary.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
