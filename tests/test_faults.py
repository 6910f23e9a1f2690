"""Faults (issue 4): bad input never kills a stage; dead and stuck stages are restarted.

Real processes, real sockets. Budget on 2 loaded cores: about 60 s for this file.

- Each stage with an input (detect, lift, smooth, output) runs alone under
  tests/stage_harness.py and gets MALFORMED_PER_KIND messages of each malformed kind on
  its real input socket, then hypothesis-generated ones (HYPOTHESIS_EXAMPLES), then a good
  one: it must stay alive, count every bad message, log each kind once, and still work.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.config import LiftConfig, OutputConfig, PipelineConfig
from pipeline.health import Liveness, RejectCounter, RestartBudget
from pipeline.schema import (
    MAX_HEADER_BYTES,
    Frame,
    Keypoints2D,
    Person2D,
    Person3D,
    Pose3D,
    SchemaError,
    Status,
    decode,
    encode,
)
from bench.stream_log import StreamLog
from tests.conftest import free_port
from tests.stage_harness import StageHarness, lifter_engine

#: malformed messages of each kind per stage (11 kinds: about 2200 per stage)
MALFORMED_PER_KIND = 200
#: hypothesis examples per stage, sent over the stage's socket
HYPOTHESIS_EXAMPLES = 150
RNG = np.random.default_rng(4)


# --------------------------------------------------------------------------- health rules
def test_restart_budget_backs_off_then_gives_up_then_forgives():
    b = RestartBudget(max_restarts=3, window_s=10.0, backoff_initial_s=0.1, backoff_max_s=0.3)
    assert [b.on_death(t) for t in (0.0, 1.0, 2.0)] == [0.1, 0.2, 0.3]  # doubling, capped
    assert b.on_death(3.0) is None  # a 4th death within 10 s: give up
    assert "4 deaths in the last 10 s" in b.describe(3.0)
    assert b.on_death(30.0) == 0.1  # long after: a fresh budget
    assert b.restarts == 4


def test_restart_budget_does_not_back_off_after_a_process_that_ran_well():
    """Deaths of processes that had run stable_s or longer (kills, one bad input) are not a
    crash loop: each restart comes after the initial wait; the budget still counts them."""
    b = RestartBudget(max_restarts=4, window_s=60.0, backoff_initial_s=0.05,
                      backoff_max_s=2.0, stable_s=10.0)
    assert [b.on_death(t, ran_s=12.0) for t in (0.0, 12.0, 24.0)] == [0.05, 0.05, 0.05]
    assert b.on_death(25.0, ran_s=1.0) == 0.4  # a quick death: the 4th in the window doubles
    assert b.on_death(26.0, ran_s=30.0) is None  # the 5th within 60 s: give up all the same


def test_liveness_sees_silence_and_a_call_that_never_returns():
    live = Liveness(timeout_s=1.0)
    live.start("detect", 0.0)
    live.start("lift", 0.0)
    live.beat("detect", 0.9)
    live.beat("lift", 0.9, busy_s=0.5)
    assert live.stuck(1.05) == []
    stuck = dict(live.stuck(1.5))
    assert "no heartbeat" in stuck["lift"] or "busy" in stuck["lift"]
    assert "detect" not in stuck
    live.beat("lift", 1.5, busy_s=1.2)  # still beating, but one call for 1.2 s
    assert "busy" in dict(live.stuck(1.5))["lift"]
    live.forget("lift")
    assert [s for s, _ in live.stuck(5.0)] == ["detect"]
    with pytest.raises(ValueError):
        Liveness(timeout_s=0.1)


def test_reject_counter_logs_each_kind_once(caplog):
    c = RejectCounter("stage detect")
    with caplog.at_level("WARNING"):
        for i in range(500):
            c.reject("schema", f"bad header {i}")
            c.reject("transport", "no frames")
    assert c.counts == {"schema": 500, "transport": 500} and c.total == 1000
    assert len(caplog.records) == 2


# --------------------------------------------------------------------------- corpus
def _good(kind: type, frame_id: int = 1):
    now = time.monotonic_ns()
    if kind is Frame:
        return Frame(frame_id=frame_id, t_capture_ns=now, stamps=(("capture", now, now),),
                     image=RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8), source="test")
    pts = np.array([[320 + 30 * np.cos(a), 240 + 100 * np.sin(a)]
                    for a in np.linspace(0, 6, NUM_JOINTS)], np.float32)
    conf = np.full(NUM_JOINTS, 0.9, np.float32)
    if kind is Keypoints2D:
        return Keypoints2D(frame_id=frame_id, t_capture_ns=now, image_size=(640, 480),
                           people=(Person2D(track_id=0, joints_2d_px=pts, confidence=conf),))
    joints = np.zeros((NUM_JOINTS, 3), np.float32)
    joints[:, 2] = 3.0
    return Pose3D(frame_id=frame_id, t_capture_ns=now, image_size=(640, 480),
                  people=(Person3D(track_id=1, joints_3d_m=joints, root_m=joints[0].copy(),
                                   joints_2d_px=pts, confidence=conf,
                                   reproj_err_px=np.zeros(NUM_JOINTS, np.float32)),))


def _header(msg) -> tuple[dict, list[bytes]]:
    frames = [bytes(f) for f in encode(msg)]
    return msgpack.unpackb(frames[0]), frames


def _pack(header: dict, frames: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


#: labels of the corpus's kinds that no correct stage may accept, whatever the decoder says:
#: the expected reject count is their number, not what `pipeline.schema.decode` makes of them
#: (a decoder that wrongly took one would otherwise lower the expectation with it).
#: "random bytes": up to 600 random bytes as the header, never a msgpack map holding every
#: field of a message by chance; "truncated": a strict prefix of a map, never a whole one;
#: "wrong type": a valid message of a class the stage does not take.
NEVER_VALID = frozenset({
    "random bytes", "truncated", "wrong version", "unknown type", "wrong shape",
    "oversized header", "wrong type", "extra frames", "edge: no frames", "edge: unknown kind",
})
#: labels broken at the edge level (the runner's "transport" rejects)
EDGE_BROKEN = frozenset({"edge: no frames", "edge: unknown kind"})
#: the one kind whose validity only decoding tells: 4 random bytes of the header overwritten
#: may leave a valid message (a flip inside an array's data, say)
DECODE_DECIDES = "byte flips"


def malformed_corpus(kind: type, n: int) -> list[tuple[str, list[bytes]]]:
    """(label, edge message parts) of every malformed kind, n each. Parts start with the
    edge kind frame (b"D" data); the EDGE_BROKEN labels are broken at the edge level."""
    out: list[tuple[str, list[bytes]]] = []
    other = Status(kind="info", text="not for you") if kind is not Status else _good(Pose3D)
    for i in range(n):
        header, frames = _header(_good(kind, i))
        cut = int(RNG.integers(1, len(frames[0])))
        flipped = bytearray(frames[0])
        for j in RNG.integers(0, len(flipped), 4):
            flipped[j] = int(RNG.integers(0, 256))
        bad_shape = dict(header)
        if kind is Frame:
            spec = dict(header["image"])
            spec["shape"] = [*spec["shape"][:-1], spec["shape"][-1] + 1]
            bad_shape["image"] = spec
        else:  # schema 2: the arrays are in each person's map
            field = "joints_2d_px" if kind is Keypoints2D else "joints_3d_m"
            person = dict(header["people"][0])
            spec = dict(person[field])
            spec["shape"] = [*spec["shape"][:-1], spec["shape"][-1] + 1]
            person[field] = spec
            bad_shape["people"] = [person, *header["people"][1:]]
        out += [
            ("random bytes", [b"D", RNG.bytes(int(RNG.integers(0, 600)))]),
            ("truncated", [b"D", frames[0][:cut], *frames[1:]]),
            ("wrong version", [b"D", *_pack({**header, "schema_version": 99}, frames)]),
            ("unknown type", [b"D", *_pack({**header, "type": "Skeleton"}, frames)]),
            ("wrong shape", [b"D", *_pack(bad_shape, frames)]),
            ("oversized header", [b"D", *_pack({**header, "pad": "x" * (MAX_HEADER_BYTES + 1)},
                                               frames)]),
            ("wrong type", [b"D", *[bytes(f) for f in encode(other)]]),
            ("extra frames", [b"D", *frames, b"x", b"y"]),
            ("byte flips", [b"D", bytes(flipped), *frames[1:]]),
            ("edge: no frames", [b"D"]),
            ("edge: unknown kind", [b"?" + RNG.bytes(3), *frames]),
        ]
    return out


def flip_rejected(parts: list[bytes], accepted: tuple[type, ...]) -> bool:
    """For a "byte flips" message only: True if decoding rejects it or it is of a class the
    stage does not take."""
    try:
        msg = decode(parts[1:])
    except SchemaError:
        return True
    return not isinstance(msg, accepted)


# --------------------------------------------------------------------------- stage flood

STAGE_INPUT = {"detect": Frame, "lift": Keypoints2D, "smooth": Pose3D, "output": Pose3D}


def _weird_but_valid(kind: type):
    """Hypothesis: schema-valid messages with hostile content (tiny/odd images, NaN, inf,
    huge or negative coordinates, no person, odd image sizes)."""
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    common = dict(frame_id=st.integers(0, 2**63 - 1), t_capture_ns=st.integers(0, 2**63 - 1))
    if kind is Frame:
        shapes = st.tuples(st.integers(1, 96), st.integers(1, 96), st.just(3))
        return st.builds(
            lambda fid, t, shape, seed: Frame(
                frame_id=fid, t_capture_ns=t, source="fuzz",
                image=np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)),
            common["frame_id"], common["t_capture_ns"], shapes, st.integers(0, 2**32 - 1))
    arr = lambda n, m=None: st.lists(floats, min_size=n * (m or 1), max_size=n * (m or 1)).map(
        lambda v: np.array(v, np.float32).reshape((n, m) if m else (n,)))
    sizes = st.tuples(st.integers(1, 65535), st.integers(1, 65535))
    track_ids = st.integers(0, 2**63 - 1)
    if kind is Keypoints2D:
        person = st.builds(Person2D, track_id=track_ids, joints_2d_px=arr(NUM_JOINTS, 2),
                           confidence=arr(NUM_JOINTS))
        return st.builds(Keypoints2D, **common, image_size=sizes,
                         people=st.lists(person, max_size=4).map(tuple))
    person = st.builds(Person3D, track_id=track_ids, joints_3d_m=arr(NUM_JOINTS, 3),
                       root_m=arr(3), joints_2d_px=arr(NUM_JOINTS, 2),
                       confidence=arr(NUM_JOINTS), reproj_err_px=arr(NUM_JOINTS))
    return st.builds(Pose3D, **common, image_size=sizes,
                     people=st.lists(person, max_size=4).map(tuple))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return str(lifter_engine(tmp_path_factory.mktemp("engine")))


@pytest.mark.parametrize("stage", sorted(STAGE_INPUT))
def test_malformed_flood_is_counted_and_never_kills_a_stage(stage, engine, tmp_path):
    port = free_port()
    config = PipelineConfig(lift=LiftConfig(engine_path=engine),
                            output=OutputConfig(publish=f"tcp://127.0.0.1:{port}"))
    kind = STAGE_INPUT[stage]
    accepted = (kind,)
    h = StageHarness(config, stage, tmp_path).start()
    ctx = zmq.Context.instance()
    sub = None
    try:
        corpus = malformed_corpus(kind, MALFORMED_PER_KIND)
        labels = {label for label, _ in corpus}
        assert labels == NEVER_VALID | {DECODE_DECIDES}, labels  # every kind is labelled
        never_valid = sum(label in NEVER_VALID for label, _ in corpus)
        edge_broken = sum(label in EDGE_BROKEN for label, _ in corpus)
        flips_rejected = sum(flip_rejected(parts, accepted)
                             for label, parts in corpus if label == DECODE_DECIDES)
        expected_rejects = never_valid + flips_rejected
        # schema-valid messages of the accepted type: byte flips that survived
        sent_valid = MALFORMED_PER_KIND - flips_rejected
        for _label, parts in corpus:
            h.send(parts)
        assert h.alive()

        @settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(_weird_but_valid(kind))
        def fuzz(msg):
            nonlocal sent_valid
            h.send_message(encode(msg))
            sent_valid += 1

        fuzz()
        assert h.alive(), f"stage {stage} died on a schema-valid message: {h.log_text()[-3000:]}"

        # it still works: a good message goes through
        good = _good(kind, frame_id=424242)
        if stage == "output":
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"pose3d")
            sub.connect(config.output.publish)
            # slow joiner: resend until it arrives; fuzzed messages still queued in the
            # stage may be published first, so skip those (by frame id)
            seen = []
            deadline = time.monotonic() + 20
            while 424242 not in seen and time.monotonic() < deadline:
                h.send_message(encode(good))
                sent_valid += 1
                while sub.poll(200, zmq.POLLIN):
                    seen.append(decode(sub.recv_multipart()[1:]).frame_id)
                    if seen[-1] == 424242:
                        break
            assert 424242 in seen, seen[-20:]
        else:
            h.send_message(encode(good))
            sent_valid += 1
            ids = [decode(h.receive()).frame_id]  # first perhaps an older unsent output
            if ids[0] != 424242:
                ids.append(decode(h.receive()).frame_id)
            assert ids[-1] == 424242, ids

        stats = h.stop()
    finally:
        if sub is not None:
            sub.close(0)
        h.close()

    rejected = stats["rejected"]
    total_rejected = sum(rejected.values())
    schema_rejects = sum(v for k, v in rejected.items() if not k.startswith("process"))
    assert schema_rejects == expected_rejects, (stats, never_valid, flips_rejected)
    assert rejected.get("transport", 0) == edge_broken, stats
    assert stats["processed"] + sum(v for k, v in rejected.items() if k.startswith("process")) \
        == sent_valid, stats
    assert total_rejected >= expected_rejects
    warnings = [line for line in h.log_text().splitlines()
                if "WARNING" in line and "reject" in line]
    assert len(warnings) <= len(rejected), f"logged more than once per kind: {warnings[:20]}"


# --------------------------------------------------------------------------- real pipeline
#: kill -9 of each stage process, this many rounds (12 kills with 2 and 6 stages)
KILL_ROUNDS = 2
#: after a kill -9, poses captured after the kill must arrive within this (a generous bound
#: that only a restart that failed or hung misses; the strict 2 s target is measured over many
#: kills by `python -m bench.bounds resume`, not asserted here, where a shared machine's
#: load would make it flaky)
RESUME_LIMIT_S = 15.0
#: Ctrl-C moments, seconds after the start of run_pipeline.py: during Python start-up, while
#: stages open their models, and while streaming (plus a random jitter each)
CTRL_C_AT_S = (0.0, 0.6, 1.5, 3.0, 6.0)


def uncaught_exceptions(text: str) -> list[str]:
    """The exception line ending each traceback chain printed in `text` (a chain: tracebacks
    joined by "During handling of the above exception..." or "The above exception was the
    direct cause..."; only its last one went uncaught)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Traceback (most recent call last):"):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            j += 1
        exception = lines[j] if j < len(lines) else "<traceback cut off>"
        k = j + 1
        while k < len(lines) and not lines[k].strip():
            k += 1
        chained = k < len(lines) and (lines[k].startswith("During handling of the above")
                                      or lines[k].startswith("The above exception was"))
        if not chained:
            out.append(exception)
        i = j + 1
    return out


def test_uncaught_exceptions_reads_chains():
    chain = ("Traceback (most recent call last):\n  File \"a.py\", line 1\n    import x\n"
             "ImportError: no x\n\nDuring handling of the above exception, another exception "
             "occurred:\n\nTraceback (most recent call last):\n  File \"b.py\", line 2\n"
             "KeyboardInterrupt\n")
    crash = "Traceback (most recent call last):\n  File \"c.py\", line 3\nValueError: bad\n"
    assert uncaught_exceptions(chain) == ["KeyboardInterrupt"]
    assert uncaught_exceptions("log line\n" + crash + chain) == ["ValueError: bad",
                                                                 "KeyboardInterrupt"]
    assert uncaught_exceptions("no traceback here") == []


def _video(shared_file) -> str:
    return str(shared_file("data/footage/openpose/examples/media/video.avi"))


def _pump_until(sup, predicate, timeout_s: float) -> bool:
    """Let the supervisor watch (it restarts stages from its watch loop) until predicate()."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = sup.watch(timeout_s=0.05)
        assert code == -1, f"the pipeline ended (exit {code}): {sup.failure}"
        if predicate():
            return True
    return False


def test_kill9_of_each_stage_in_turn_poses_resume(supervisors, shared_file, engine):
    import os
    import signal

    from pipeline.config import CaptureConfig, SupervisorConfig
    from pipeline.supervisor import Supervisor

    port = free_port()
    config = PipelineConfig(
        capture=CaptureConfig(video=_video(shared_file), loop=True),
        lift=LiftConfig(engine_path=engine),
        output=OutputConfig(publish=f"tcp://127.0.0.1:{port}", wait_for_subscribers=1,
                            wait_for_subscribers_s=60.0),
        supervisor=SupervisorConfig(max_restarts=KILL_ROUNDS + 1, restart_window_s=600.0,
                                    log_level="WARNING"),
    )
    log = StreamLog(config.output.publish)
    sup = Supervisor(config)
    supervisors.append(sup)
    resumes: dict[str, list[float]] = {}
    try:
        sup.start()
        assert _pump_until(sup, lambda: len(log.poses()) >= 10, 60.0), "no poses at all"
        stages = tuple(sup.pids())  # every stage process of the graph, track included
        for _round in range(KILL_ROUNDS):
            for stage in stages:
                steady = lambda: bool(log.poses()) and (
                    time.monotonic_ns() - log.poses()[-1][0] < 300e6)
                assert _pump_until(sup, steady, 20.0), f"no steady stream before killing {stage}"
                # steady state includes the warm spare that the last restart used up
                assert _pump_until(sup, sup.spare_ready, 60.0), "no warm spare"
                assert _pump_until(sup, steady, 20.0), f"no steady stream before killing {stage}"
                last_before = log.poses()[-1][1]
                old_pid = sup.pids()[stage]
                restarts = sup.procs[stage].restarts
                t_kill = time.monotonic_ns()
                os.kill(old_pid, signal.SIGKILL)
                fresh = lambda: any(m.t_capture_ns > t_kill for _, m in log.poses()[-50:])
                _pump_until(sup, fresh, RESUME_LIMIT_S)
                first = next(((t, m) for t, m in log.poses() if m.t_capture_ns > t_kill), None)
                assert first is not None, \
                    f"no pose after kill -9 of {stage} within {RESUME_LIMIT_S} s"
                resumes.setdefault(stage, []).append((first[0] - t_kill) / 1e9)
                assert sup.pids()[stage] != old_pid
                assert sup.procs[stage].restarts == restarts + 1
                # the gap shows (a restarted capture goes on from its predecessor's ids)
                assert first[1].frame_id > last_before.frame_id + 1, (stage, first[1].frame_id,
                                                                      last_before.frame_id)
        time.sleep(0.5)
        restarted = {t.text.split()[1] for t in log.statuses() if t.kind == "restart"}
    finally:
        sup.stop()
        log.close()
    print("resume after kill -9, s:", {k: [round(x, 2) for x in v] for k, v in resumes.items()})
    assert sorted(resumes) == sorted(stages) and len(stages) >= 5, stages
    assert all(len(v) == KILL_ROUNDS for v in resumes.values()), resumes
    # subscribers were told (the output's own restart is told by the output it replaces)
    assert set(stages) - {"output"} <= restarted, restarted


def test_ctrl_c_at_random_moments_leaves_no_process_and_no_ipc_file(reaper, shared_file,
                                                                     engine, tmp_path):
    import os
    import random
    import signal
    import subprocess

    from tests.conftest import children_of, pid_alive, process_start, wait_gone

    from pipeline.supervisor import SHM_DIR_PREFIX

    def shm_dirs() -> set[str]:  # runs' shared-memory rings (pipeline.shm); not the
        # posestream-bench-* frame folders a benchmark running beside the tests makes
        return ({n for n in os.listdir("/dev/shm") if n.startswith(SHM_DIR_PREFIX)}
                if os.path.isdir("/dev/shm") else set())

    shm_before = shm_dirs()
    # a fresh jitter each run explores more moments; the seed is printed and in every
    # failure message, and POSESTREAM_CTRL_C_SEED=N replays a run
    seed = int(os.environ.get("POSESTREAM_CTRL_C_SEED", random.SystemRandom().randrange(2**32)))
    print(f"Ctrl-C jitter seed {seed} (replay: POSESTREAM_CTRL_C_SEED={seed})")
    rng = random.Random(seed)
    report = []
    for at_s in CTRL_C_AT_S:
        at_s += rng.uniform(0.0, 0.5)
        tmp = tmp_path / f"run{len(report)}"
        tmp.mkdir()
        port = free_port()
        popen = reaper.python(
            "run_pipeline.py", "--video", _video(shared_file), "--loop", "--engine", engine,
            "--publish", f"tcp://127.0.0.1:{port}", "--log-level", "WARNING",
            # faulthandler: a run that ignores the Ctrl-C shows its stacks on SIGABRT
            env={"TMPDIR": str(tmp), "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        started: dict[int, int | None] = {}  # every stage pid that ever existed: its start time

        def note_children() -> None:
            for pid in children_of(popen.pid):
                started.setdefault(pid, process_start(pid))

        deadline = time.monotonic() + at_s
        while time.monotonic() < deadline:
            note_children()
            time.sleep(0.02)
        note_children()
        seen = set(started)
        reaper.track(seen)
        t0 = time.monotonic()
        popen.send_signal(signal.SIGINT)
        try:
            code = popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.send_signal(signal.SIGABRT)  # its Python stacks, then it ends
            try:
                _, stderr = popen.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                _, stderr = popen.communicate()
            pytest.fail(f"seed {seed}: run_pipeline did not exit within 10 s of Ctrl-C at "
                        f"{at_s:.2f} s; its stderr ends (stacks at SIGABRT):\n{stderr[-6000:]}")
        # a pid alive now is a stage still running only if it started when that stage did: a
        # long test session wraps the kernel's pid counter, and a new process may get the number
        left = [p for p in wait_gone(sorted(seen), 3.0) if process_start(p) == started[p]]
        stderr = popen.stderr.read()
        report.append((round(at_s, 2), code, len(seen), round(time.monotonic() - t0, 2)))
        assert left == [], f"seed {seed}: Ctrl-C at {at_s:.2f} s left processes {left}: {stderr[-2000:]}"
        assert all(not pid_alive(p) or process_start(p) != started[p] for p in seen)
        # ONNX Runtime keeps a telemetry session id in $TMPDIR/.ses (not ours, reused)
        leftovers = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name != ".ses"]
        assert leftovers == [], f"seed {seed}: Ctrl-C at {at_s:.2f} s left files {leftovers}"
        assert shm_dirs() <= shm_before, f"seed {seed}: Ctrl-C at {at_s:.2f} s left /dev/shm entries"
        # 130 once the supervisor's handler is in, and then no traceback at all; a Ctrl-C
        # during Python's own start-up may end it as a KeyboardInterrupt (1, or killed by
        # SIGINT) - and then every uncaught exception printed is that KeyboardInterrupt,
        # never a crash of another kind (of run_pipeline or of any stage)
        assert code in (130, 1, -signal.SIGINT), (seed, at_s, code, stderr[-2000:])
        uncaught = uncaught_exceptions(stderr)
        if code == 130:
            assert "Traceback" not in stderr, (seed, at_s, stderr[-2000:])
        else:
            # CPython prints a bare "KeyboardInterrupt" (no traceback) when the signal lands
            # while its start-up runs no Python frame (reproduced: SIGINT 20 ms into
            # `run_pipeline.py --help`)
            bare = stderr.strip().splitlines()[-1:] == ["KeyboardInterrupt"]
            assert uncaught or bare or code == -signal.SIGINT, (seed, at_s, stderr[-2000:])
        assert all(e.startswith("KeyboardInterrupt") for e in uncaught), \
            (seed, at_s, uncaught, stderr[-2000:])
    print(f"Ctrl-C (seed {seed}; at s, exit code, stage processes seen, s to exit):", report)
    assert any(n >= 5 for _, _, n, _ in report), "no Ctrl-C hit a running pipeline"
