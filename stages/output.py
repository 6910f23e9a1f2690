"""Output: publish each (smoothed) `Pose3D` to the world on a PUB socket.

Wire: `[topic, header]` where topic is `config.topic` (b"pose3d") and header the msgpack
map described in pipeline/schema.py. An XPUB socket is used so this stage can see
subscriptions: with `wait_for_subscribers` it holds the start until that many are
connected (a readiness handshake for the public stream, instead of losing the first poses
to the slow joiner). A subscriber that stops reading loses messages at the high-water mark
and never slows the pipeline. With `curve_secret_key` and `curve_authorized_dir` the socket
is a CurveZMQ server: only subscribers whose public key is in that folder complete the
handshake, and the stream is encrypted (pipeline/security.py).
"""

from __future__ import annotations

import logging
import time

import zmq

from pipeline.config import OutputConfig
from pipeline.schema import Pose3D, Status, encode
from pipeline.security import CurvePublisher, authorized_keys, load_keypair
from pipeline.stage import Sink
from pipeline.transport import open_socket

log = logging.getLogger(__name__)

#: how long close() lets the last poses leave at the end of a stream, ms
FLUSH_ON_CLOSE_MS = 500


class OutputStage(Sink):
    """Publishes Pose3D (topic config.topic) and Status (topic config.status_topic)."""

    name = "output"
    inputs = (Pose3D,)
    outputs = ()

    def __init__(self, config: OutputConfig) -> None:
        super().__init__(config)
        self._ctx: zmq.Context | None = None
        self._pub: zmq.Socket | None = None
        self._curve: CurvePublisher | None = None
        self._topic = config.topic.encode()
        self._status_topic = config.status_topic.encode()
        self.subscribers = 0
        self.published = 0

    @staticmethod
    def preflight(config: OutputConfig) -> None:
        """Bind the publish endpoint once and let it go: fails before any stage starts
        when another program (another posestream?) holds it, or when CurveZMQ key files are
        missing or wrong (KeyFileError says which)."""
        if config.curve_secret_key is not None:
            load_keypair(config.curve_secret_key)
            authorized_keys(config.curve_authorized_dir)
        ctx = zmq.Context()
        try:
            sock = open_socket(ctx, zmq.XPUB, bind=config.publish)
            sock.close(linger=0)
        except zmq.ZMQError as exc:
            raise RuntimeError(
                f"{exc.strerror}: is another posestream running? stop it, or publish on "
                "another endpoint with --publish tcp://127.0.0.1:PORT"
            ) from exc
        finally:
            ctx.term()

    def open(self) -> None:
        self._ctx = zmq.Context()
        options = None
        if self.config.curve_secret_key is not None:
            self._curve = CurvePublisher(
                self._ctx, self.config.curve_secret_key, self.config.curve_authorized_dir
            )
            options = self._curve.options
        self._pub = open_socket(
            self._ctx, zmq.XPUB, bind=self.config.publish, sndhwm=self.config.sndhwm, rcvhwm=64,
            options=options,
        )
        # every (un)subscription, also repeated ones, so subscribers can be counted
        self._pub.setsockopt(zmq.XPUB_VERBOSER, 1)
        log.info("output: publishing topic %r on %s", self.config.topic, self.config.publish)
        if self.config.wait_for_subscribers > 0:
            deadline = time.monotonic() + self.config.wait_for_subscribers_s
            while self.subscribers < self.config.wait_for_subscribers:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("output: %d of %d subscribers after %.1f s; starting anyway",
                                self.subscribers, self.config.wait_for_subscribers,
                                self.config.wait_for_subscribers_s)
                    break
                if self._pub.poll(int(min(left, 0.1) * 1000), zmq.POLLIN):
                    self._read_subscriptions()

    def _read_subscriptions(self) -> None:
        """Count (un)subscriptions: XPUB delivers b"\\x01topic" / b"\\x00topic"."""
        while True:
            try:
                event = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.subscribers += 1
            elif event[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def consume(self, msg: Pose3D) -> None:
        """Publish one pose (it already carries every stage's stamp, this one's included)."""
        self._read_subscriptions()
        self._pub.send_multipart([self._topic, *encode(msg)], copy=True)
        self.published += 1

    def publish_status(self, status: Status) -> None:
        """Publish a Status (gap, restart, error) for subscribers on the status topic."""
        self._pub.send_multipart([self._status_topic, *encode(status)], copy=True)

    def close(self) -> None:
        if self._pub is not None:
            self._pub.close(linger=FLUSH_ON_CLOSE_MS)  # the stream's last poses still go out
            self._pub = None
        if self._curve is not None:
            self._curve.close()
            self._curve = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        log.info("output: published %d poses", self.published)
