"""TopologyConfig.colocate / run_pipeline.py --colocate-smooth: smoothing inside the output
process. The graph (pure) and a real run: four processes, every frame, the same stamps."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from pipeline.config import (
    CaptureConfig,
    LiftConfig,
    OutputConfig,
    PipelineConfig,
    SupervisorConfig,
    TopologyConfig,
    TransportConfig,
)
from pipeline.graph import build_graph
from pipeline.schema import Pose3D, SchemaError, decode
from pipeline.supervisor import Supervisor
from tests.conftest import free_port
from tests.stage_harness import lifter_engine

VIDEO = "data/footage/openpose/examples/media/video.avi"
FRAMES = 24


def test_graph_puts_smooth_inside_output():
    g = build_graph(PipelineConfig(topology=TopologyConfig(colocate=("smooth",))))
    assert g.stage_names() == ("capture", "detect", "lift", "output")
    assert [p.name for p in g.spec("output").pre] == ["smooth"]
    assert [p.name for p in g.spec("lift").pre] == ["track"]  # always: frames are in order there
    assert [e.name for e in g.edges] == ["capture-detect", "detect-lift", "lift-output"]
    with pytest.raises(ValueError, match="colocate"):
        TopologyConfig(colocate=("detect",))
    with pytest.raises(ValueError, match="output"):
        build_graph(PipelineConfig(topology=TopologyConfig(
            colocate=("smooth",), only=("lift", "smooth"),
            endpoints=(("detect-lift", "tcp://127.0.0.1:5999"),))))


def test_a_real_run_with_smoothing_in_the_output_process(supervisors, shared_file, tmp_path):
    port = free_port()
    config = PipelineConfig(
        capture=CaptureConfig(video=str(shared_file(VIDEO)), as_fast_as_possible=True,
                              max_frames=FRAMES),
        lift=LiftConfig(engine_path=str(lifter_engine(tmp_path))),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        transport=TransportConfig(policy="lossless"),
        supervisor=SupervisorConfig(log_level="WARNING"),
        topology=TopologyConfig(colocate=("smooth",)),
    )
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
    sub.connect(config.output.publish)
    sup = Supervisor(config)
    supervisors.append(sup)
    poses = []
    try:
        sup.start()
        assert set(sup.pids()) == {"capture", "detect", "lift", "output"}
        while len(poses) < FRAMES and sub.poll(60_000, zmq.POLLIN):
            try:
                msg = decode(sub.recv_multipart()[1:])
            except SchemaError:
                continue
            if isinstance(msg, Pose3D):
                poses.append(msg)
        assert sup.watch(timeout_s=30.0) == 0, sup.failure
    finally:
        sup.stop()
        sub.close()
        ctx.term()
    assert [p.frame_id for p in poses] == list(range(FRAMES))
    for p in poses:
        names = [s[0] for s in p.stamps]
        assert names == ["capture", "detect", "track", "lift", "smooth", "output"]
        lift_out, smooth_in, smooth_out, output_in = (p.stamps[3][2], p.stamps[4][1],
                                                      p.stamps[4][2], p.stamps[5][1])
        assert lift_out <= smooth_in <= smooth_out <= output_in
        assert all(np.isfinite(person.joints_3d_m).all() for person in p.people)
    stats = sup.procs["output"].stats
    assert stats["processed"] == FRAMES and stats["rejected"] == {}
