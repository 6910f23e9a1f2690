"""Large message parts through shared memory on a private edge (same host, same run).

A raw 1280x720 frame is 2.7 MB: through a unix socket it is copied into the kernel and out
again in ~200 kB pieces, with the two processes taking turns (about 1.1 ms a hop here).
Written once into a memory-mapped file in /dev/shm and copied once out of it, it costs about
half that. The edge protocol (pipeline.transport) stays the same apart from one message kind:
the producer puts each large part into a slot of a `FrameRing` and sends a small descriptor
in its place; the consumer's `RingReader` hands out read-only views of the slot (no copy),
and the producer keeps that slot out of use until the consumer's next credit says it is done
with the message (or copies the parts out on arrival, `copy=True`).

A ring file: RING_SLOTS slots of a fixed capacity, each with a 64-byte header whose first
8 bytes are the slot's sequence number (a seqlock): the producer writes BUSY there, then the
data, then the new sequence number; the reader checks the number before and after its copy
and drops the message (counted, never decoded) if the slot was rewritten meanwhile. The
producer picks the slot written longest ago that no queued or lent message uses (the
caller says which: pipeline.transport tracks them), so a slot is never rewritten under a
reader that keeps to the credit protocol; the sequence check catches one that does not.

Only files named `<prefix>*.ring` directly inside the run's private shm directory are ever
opened by a reader: a descriptor cannot make a stage map an arbitrary path.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

#: slots per ring: several messages may be queued or in flight at once (detection workers)
RING_SLOTS: int = 8
#: a part at least this large goes through the ring (smaller ones stay in the message)
MIN_PART_BYTES: int = 64 * 1024
HEADER_BYTES: int = 64
BUSY: int = (1 << 64) - 1
_SEQ = struct.Struct("<Q")
#: a descriptor is small: anything larger is malformed
MAX_DESCRIPTOR_BYTES: int = 1024


class RingError(ValueError):
    """A descriptor that does not name a valid slot of a ring of this run."""


def _round_up(n: int, to: int = 4096) -> int:
    return (n + to - 1) // to * to


def _remove_stale(directory: str, prefix: str) -> None:
    """Remove ring files of this producer's earlier selves (a stage killed and restarted)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        head, _, rest = name.partition(f"{prefix}-")
        pid = rest.split("-", 1)[0]
        if head or not name.endswith(".ring") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


class FrameRing:
    """Producer side: slots in one file in `directory`, named `<prefix>-<pid>-<n>.ring`.

    `put(parts, busy_slots)` returns (descriptor, slot, parts with the large ones emptied) or
    None when nothing is large enough or every slot is busy (send the message as it is).
    A ring grows (a new file, the old one removed) when a message no longer fits.
    Call `close()` to remove the file.
    """

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        _remove_stale(directory, prefix)
        self._n = 0
        self._path: str | None = None
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._seq = 0
        self._written_at = [0] * RING_SLOTS  # slot -> seq it holds (0: never written)

    @property
    def name(self) -> str | None:
        """File name (no directory) of the current ring, None before the first put."""
        return None if self._path is None else os.path.basename(self._path)

    def _grow(self, need: int) -> None:
        self.close()
        self._n += 1
        self._capacity = _round_up(need + need // 4)
        slot_bytes = HEADER_BYTES + self._capacity
        name = f"{self.prefix}-{os.getpid()}-{self._n}.ring"
        self._path = os.path.join(self.directory, name)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, RING_SLOTS * slot_bytes)
            self._map = mmap.mmap(fd, RING_SLOTS * slot_bytes)
        finally:
            os.close(fd)
        self._written_at = [0] * RING_SLOTS

    def put(self, parts: Sequence[Any], busy_slots: set[int] | frozenset[int] = frozenset()
            ) -> tuple[bytes, int, list[Any]] | None:
        """Write the large parts of one message into a slot not in `busy_slots` (held by a
        queued message, or lent to a consumer that has not asked for its next one).

        Returns (descriptor bytes, slot, parts with each large part replaced by b""), or
        None (nothing large, or every slot is busy).
        """
        views = [memoryview(p).cast("B") if not isinstance(p, bytes) else p for p in parts]
        big = [i for i, v in enumerate(views) if len(v) >= MIN_PART_BYTES]
        if not big:
            return None
        need = sum(_round_up(len(views[i]), 64) for i in big)
        if need > self._capacity:
            self._grow(need)
        free = [s for s in range(RING_SLOTS) if s not in busy_slots]
        if not free:
            return None
        slot = min(free, key=lambda s: self._written_at[s])
        base = slot * (HEADER_BYTES + self._capacity)
        buf = self._map
        _SEQ.pack_into(buf, base, BUSY)
        table = []
        offset = 0
        for i in big:
            n = len(views[i])
            start = base + HEADER_BYTES + offset
            buf[start:start + n] = views[i]
            table.append((i, offset, n))
            offset += _round_up(n, 64)
        self._seq += 1
        _SEQ.pack_into(buf, base, self._seq)
        self._written_at[slot] = self._seq
        descriptor = msgpack.packb({"ring": self.name, "slot": slot, "seq": self._seq,
                                    "cap": self._capacity, "parts": table})
        out = list(parts)
        for i in big:
            out[i] = b""
        return descriptor, slot, out

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


class RingReader:
    """Consumer side: resolves descriptors against ring files in `directory` only.

    `read(descriptor, parts, copy)` returns the message's parts with the large ones as
    read-only views of the ring (copy=False: valid until the consumer asks for its next
    message) or copied out (copy=True), or None when the slot had been rewritten (drop the
    message). Raises RingError for a descriptor that is malformed or names a file that is
    not a ring of this run.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        self._name: str | None = None
        self._map: mmap.mmap | None = None

    def _open(self, name: str) -> mmap.mmap:
        if name == self._name and self._map is not None:
            return self._map
        if (not isinstance(name, str) or not name.endswith(".ring") or "/" in name
                or "\0" in name or name.startswith(".")):
            raise RingError(f"not a ring file name: {name!r}")
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise RingError(f"ring {name!r}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise RingError(f"ring {name!r} is empty")
            new = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.close()
        self._name, self._map = name, new
        return new

    def read(self, descriptor: bytes, parts: Sequence[Any], copy: bool = True
             ) -> list[Any] | None:
        if len(descriptor) > MAX_DESCRIPTOR_BYTES:
            raise RingError(f"descriptor of {len(descriptor)} bytes")
        try:
            d = msgpack.unpackb(descriptor, max_str_len=256, max_array_len=64, max_map_len=8)
            name, slot, seq = d["ring"], d["slot"], d["seq"]
            capacity, table = d["cap"], d["parts"]
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise RingError(f"malformed descriptor: {exc}") from exc
        ok_ints = all(isinstance(v, int) and v >= 0 for v in (slot, seq, capacity))
        if not ok_ints or slot >= RING_SLOTS or not isinstance(table, list):
            raise RingError("malformed descriptor fields")
        buf = self._open(name)
        slot_bytes = HEADER_BYTES + capacity
        if RING_SLOTS * slot_bytes != len(buf):
            raise RingError(f"ring {name!r}: capacity {capacity} does not match its size")
        base = slot * slot_bytes
        out = list(parts)
        copies = []
        for entry in table:
            if (not isinstance(entry, list) or len(entry) != 3
                    or not all(isinstance(v, int) and v >= 0 for v in entry)):
                raise RingError("malformed part entry")
            index, offset, length = entry
            if index >= len(out) or offset + length > capacity:
                raise RingError("part outside the message or the slot")
            copies.append((index, base + HEADER_BYTES + offset, length))
        if _SEQ.unpack_from(buf, base)[0] != seq:
            return None  # already rewritten
        for index, start, length in copies:
            if copy:
                part = np.empty(length, np.uint8)
                part[:] = np.frombuffer(buf, np.uint8, length, start)
                out[index] = part
            else:
                out[index] = memoryview(buf)[start:start + length]
        if _SEQ.unpack_from(buf, base)[0] != seq:
            return None  # rewritten while we copied
        return out

    def close(self) -> None:
        """Let go of the current ring (its mapping closes once no view of it is left)."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a decoded message still looks at it: freed with the last view
            self._map = None
            self._name = None
