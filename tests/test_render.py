"""pipeline.render draws the right pixels (skeleton colours at the projected joints, nothing for
unsure joints, an orbiting 3D view), and pipeline.view, a real subscriber process, keeps a PNG of
what a real publisher process sends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.runtime.skeleton import BONES, NUM_JOINTS, Joint
from pipeline.render import (
    COLOR_BLANK_BG,
    JOINT_COLORS,
    RenderStyle,
    ViewStats,
    camera_panel_size,
    project_orbit,
    project_orbit_points,
    render,
    track_color,
)
from pipeline.schema import Person3D

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (1280, 720)  # (width, height) px
F_PX = 800.0
STYLE = RenderStyle()
# a T-pose, camera frame metres (+Y down), relative to the pelvis; subject faces the camera,
# so its left (l_*) joints have +X
T_POSE_REL_M = np.array(
    [[0, 0, 0], [-.13, 0, 0], [-.13, .45, 0], [-.13, .88, 0], [.13, 0, 0], [.13, .45, 0],
     [.13, .88, 0], [0, -.23, 0], [0, -.48, 0], [0, -.58, 0], [0, -.68, 0], [.17, -.45, 0],
     [.45, -.45, 0], [.7, -.45, 0], [-.17, -.45, 0], [-.45, -.45, 0], [-.7, -.45, 0]],
    dtype=np.float32,
)
JOINTS_3D_M = T_POSE_REL_M + np.array([0.1, 0.0, 3.0], dtype=np.float32)


def _project(joints_3d_m: np.ndarray) -> np.ndarray:
    """(17, 2) px: pinhole projection into the IMAGE_SIZE camera."""
    return (joints_3d_m[:, :2] / joints_3d_m[:, 2:] * F_PX + np.array(IMAGE_SIZE) / 2).astype(
        np.float32
    )


JOINTS_2D_PX = _project(JOINTS_3D_M)


def person(joints_2d=JOINTS_2D_PX, joints_3d=JOINTS_3D_M, conf=None, track_id=1) -> Person3D:
    conf = np.ones(NUM_JOINTS) if conf is None else conf
    return Person3D(track_id=track_id, joints_3d_m=np.asarray(joints_3d, np.float32),
                    root_m=np.asarray(joints_3d, np.float32)[0].copy(),
                    joints_2d_px=np.asarray(joints_2d, np.float32),
                    confidence=np.asarray(conf, np.float32),
                    reproj_err_px=np.zeros(NUM_JOINTS, np.float32))
STATS = ViewStats(fps=29.9, latency_ms=42.0, dropped=3, received=100, frame_id=100)


def _is_color(pixel: np.ndarray, bgr: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(bgr)) <= tol))


def _camera_panel(img: np.ndarray) -> np.ndarray:
    return img[:, : camera_panel_size(IMAGE_SIZE, STYLE)[0]]


def _panel_3d(img: np.ndarray) -> np.ndarray:
    return img[:, camera_panel_size(IMAGE_SIZE, STYLE)[0]:]


def test_layout_and_skeleton_pixels_at_the_scaled_2d_joints():
    img = render(None, [person()], STATS, 0.0, image_size=IMAGE_SIZE)
    cam_w, h = camera_panel_size(IMAGE_SIZE, STYLE)
    assert (cam_w, h) == (853, 480)
    assert img.shape == (480, 853 + 480, 3) and img.dtype == np.uint8
    cam = _camera_panel(img)
    scale = 480 / IMAGE_SIZE[1]
    for j in range(NUM_JOINTS):
        x, y = np.round(JOINTS_2D_PX[j] * scale).astype(int)
        assert _is_color(cam[y, x], JOINT_COLORS[j]), f"joint {Joint(j).name} at ({x}, {y})"
    # a bone's midpoint has its track's colour; a point off the skeleton is background
    c, p = BONES[Joint.L_KNEE - 1]
    mid = np.round((JOINTS_2D_PX[c] + JOINTS_2D_PX[p]) / 2 * scale).astype(int)
    assert _is_color(cam[mid[1], mid[0]], track_color(1))
    assert _is_color(cam[400, 100], COLOR_BLANK_BG, tol=0)


def test_unsure_and_non_finite_joints_are_not_drawn():
    conf = np.ones(NUM_JOINTS, dtype=np.float32)
    conf[Joint.L_WRIST] = 0.1
    joints_2d = JOINTS_2D_PX.copy()
    joints_2d[Joint.R_ANKLE] = np.nan
    img = render(None, [person(joints_2d, conf=conf)], STATS, 0.0, image_size=IMAGE_SIZE)
    cam = _camera_panel(img)
    scale = 480 / IMAGE_SIZE[1]
    for j in (Joint.L_WRIST,):
        x, y = np.round(JOINTS_2D_PX[j] * scale).astype(int)
        assert _is_color(cam[y, x], COLOR_BLANK_BG, tol=0)
    # the bones to the hidden joints are gone too (midpoints are background)
    for child in (Joint.L_WRIST, Joint.R_ANKLE):
        parent = BONES[child - 1][1]
        mid = np.round((JOINTS_2D_PX[child] + JOINTS_2D_PX[parent]) / 2 * scale).astype(int)
        assert _is_color(cam[mid[1], mid[0]], COLOR_BLANK_BG, tol=0)
    # the elbow is still there
    x, y = np.round(JOINTS_2D_PX[Joint.L_ELBOW] * scale).astype(int)
    assert _is_color(cam[y, x], JOINT_COLORS[Joint.L_ELBOW])


def _count_skeleton_pixels(panel: np.ndarray) -> int:
    mask = np.zeros(panel.shape[:2], bool)
    for color in set(JOINT_COLORS) | {track_color(1)}:
        mask |= np.all(np.abs(panel.astype(int) - np.array(color)) <= 12, axis=2)
    return int(mask.sum())


def test_no_person_draws_no_skeleton_but_the_text():
    img = render(None, [], STATS, 0.0, image_size=IMAGE_SIZE)
    with_person = render(None, [person()], STATS, 0.0, image_size=IMAGE_SIZE)
    assert _count_skeleton_pixels(_camera_panel(with_person)) > 1000
    assert _count_skeleton_pixels(img) == 0
    assert (_camera_panel(img)[:80, :300] > 200).sum() > 100  # white text top left


def test_3d_panel_orbits_with_time_and_matches_project_orbit():
    a = render(None, [person()], STATS, 0.0, image_size=IMAGE_SIZE)
    b = render(None, [person()], STATS, 2.5, image_size=IMAGE_SIZE)
    # the camera panel does not depend on time; the 3D panel does
    np.testing.assert_array_equal(_camera_panel(a), _camera_panel(b))
    changed = np.abs(_panel_3d(a).astype(int) - _panel_3d(b).astype(int)).max(axis=2) > 40
    assert changed.sum() > 500
    for t_s, img in ((0.0, a), (2.5, b)):
        xy, _ = project_orbit(JOINTS_3D_M, t_s, 480, STYLE)
        panel = _panel_3d(img)
        for j in range(NUM_JOINTS):
            x, y = np.round(xy[j]).astype(int)
            assert _is_color(panel[y, x], JOINT_COLORS[j]), f"t={t_s} joint {Joint(j).name}"


def test_orbit_starts_at_the_camera_view_and_turns_round():
    flat = RenderStyle(elevation_deg=0.0)
    xy0, depth0 = project_orbit(JOINTS_3D_M, 0.0, 480, flat)
    # azimuth 0: what the camera sees, x right, y down; the pelvis in the middle
    np.testing.assert_allclose(xy0[Joint.PELVIS], [240, 240])
    expected = 240 + (JOINTS_3D_M[:, :2] - JOINTS_3D_M[0, :2]) * 480 / flat.metres_across_panel
    np.testing.assert_allclose(xy0, expected, atol=1e-4)
    assert xy0[Joint.HEAD, 1] < xy0[Joint.PELVIS, 1]
    # half a turn later the subject is seen from behind: left and right swap sides
    xy_half, _ = project_orbit(JOINTS_3D_M, flat.orbit_period_s / 2, 480, flat)
    assert xy0[Joint.L_WRIST, 0] > 240 > xy_half[Joint.L_WRIST, 0]
    # a quarter turn: the T-pose plane is seen edge on, the arms collapse onto the spine
    xy_q, _ = project_orbit(JOINTS_3D_M, flat.orbit_period_s / 4, 480, flat)
    assert abs(xy_q[Joint.L_WRIST, 0] - 240) < 1e-6


def test_camera_frame_is_scaled_under_the_skeleton_and_png_round_trips(tmp_path):
    frame = np.full((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), (60, 100, 140), np.uint8)
    img = render(frame, [person()], STATS, 1.0)
    cam = _camera_panel(img)
    assert tuple(cam[400, 100]) == (60, 100, 140)
    path = tmp_path / "view.png"
    assert cv2.imwrite(str(path), img)
    np.testing.assert_array_equal(cv2.imread(str(path)), img)


def test_bad_inputs_are_refused():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="image_size"):
        render(None, [person()], STATS, 0.0)
    short = SimpleNamespace(track_id=1, joints_2d_px=JOINTS_2D_PX[:5], joints_3d_m=JOINTS_3D_M,
                            confidence=np.ones(NUM_JOINTS))
    with pytest.raises(ValueError, match=r"\(17, 2\)"):
        render(None, [short], STATS, 0.0, image_size=IMAGE_SIZE)


def test_two_people_each_in_their_track_colour_in_both_panels():
    """Two people: each one's bones in their own track's colour, at their own place; the 3D
    panel is centred between them and holds both."""
    assert track_color(1) != track_color(2)
    shifted = JOINTS_3D_M + np.array([1.2, 0.0, 0.0], np.float32)
    people = [person(track_id=1), person(_project(shifted), shifted, track_id=2)]
    img = render(None, people, STATS, 0.0, image_size=IMAGE_SIZE)
    cam = _camera_panel(img)
    scale = 480 / IMAGE_SIZE[1]
    c, p = BONES[Joint.L_KNEE - 1]
    for p3d in people:
        mid = np.round((p3d.joints_2d_px[c] + p3d.joints_2d_px[p]) / 2 * scale).astype(int)
        assert _is_color(cam[mid[1], mid[0]], track_color(p3d.track_id)), p3d.track_id
    centre = (JOINTS_3D_M[0] + shifted[0]) / 2
    spread = float(np.linalg.norm(shifted[0] - centre)) * 2 + 1.2
    view = RenderStyle(metres_across_panel=max(STYLE.metres_across_panel, spread))
    panel = _panel_3d(img)
    for p3d in people:
        xy, _ = project_orbit_points(p3d.joints_3d_m, centre, 0.0, 480, view)
        mid = np.round((xy[c] + xy[p]) / 2).astype(int)
        assert _is_color(panel[mid[1], mid[0]], track_color(p3d.track_id)), p3d.track_id


# ------------------------------------------------------------------ the viewer, end to end
PUBLISHER = textwrap.dedent(
    """
    import sys, numpy as np, zmq
    from pipeline.schema import Frame, Person3D, Pose3D, Status, encode
    from pipeline.transport import open_socket
    endpoint, n, with_frames = sys.argv[1], int(sys.argv[2]), sys.argv[5] == "frames"
    joints_3d = np.array(sys.argv[3].split(","), dtype=np.float32).reshape(17, 3)
    joints_2d = np.array(sys.argv[4].split(","), dtype=np.float32).reshape(17, 2)
    ctx = zmq.Context()
    pub = open_socket(ctx, zmq.XPUB, bind=endpoint, sndhwm=1000)
    # readiness: wait for every one of the viewer's subscriptions (it makes them one after
    # another: a message sent before its topic's subscription arrives is dropped by XPUB)
    wanted = {b"\\x01pose3d", b"\\x01status"} | ({b"\\x01frame"} if with_frames else set())
    while wanted:
        wanted.discard(pub.recv())
    # frame ids 0..n+2 with 5, 6, 7 missing: three frames "dropped upstream"
    ids = [i for i in range(n + 3) if i not in (5, 6, 7)]
    pub.send_multipart([b"status", *encode(Status(kind="info", text="hello"))])
    image = np.full((720, 1280, 3), (60, 100, 140), np.uint8)
    for i in ids:
        if with_frames:  # the camera image first, as a pipeline tap would send it
            pub.send_multipart([b"frame", *encode(Frame(frame_id=i, t_capture_ns=0, image=image))])
        pose = Pose3D(frame_id=i, t_capture_ns=0, image_size=(1280, 720), people=(Person3D(
            track_id=1, joints_3d_m=joints_3d, root_m=joints_3d[0], joints_2d_px=joints_2d,
            confidence=np.ones(17, np.float32), reproj_err_px=np.zeros(17, np.float32)),),
            engine_id="0123456789ab")
        pub.send_multipart([b"pose3d", *encode(pose)])
    pub.close(linger=2000)
    ctx.term()
    """
)


@pytest.mark.parametrize("frames", ["no-frames", "frames"])
def test_viewer_process_keeps_a_png_of_a_real_stream(tmp_path, frames):
    endpoint = f"ipc://{tmp_path}/pose.sock"
    out = tmp_path / "live.png"
    viewer = subprocess.Popen(
        [sys.executable, "-m", "pipeline.view", endpoint, "--headless-png", str(out),
         "--no-window", "--count", "20", "--timeout", "30"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, endpoint, "20",
         ",".join(map(str, JOINTS_3D_M.ravel())), ",".join(map(str, JOINTS_2D_PX.ravel())),
         frames],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        v_out, v_err = viewer.communicate(timeout=60)
        p_out, p_err = publisher.communicate(timeout=30)
    finally:
        for proc in (viewer, publisher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert publisher.returncode == 0, p_err
    assert viewer.returncode == 0, v_err
    assert "20 poses received, 3 dropped upstream" in v_out
    assert "1 status messages" in v_out
    img = cv2.imread(str(out))
    assert img is not None and img.shape == (480, 853 + 480, 3)
    cam = _camera_panel(img)
    scale = 480 / IMAGE_SIZE[1]
    for j in range(NUM_JOINTS):
        x, y = np.round(JOINTS_2D_PX[j] * scale).astype(int)
        assert _is_color(cam[y, x], JOINT_COLORS[j])
    # the skeleton is drawn on the camera image when the publisher sends one, else on black
    background = (60, 100, 140) if frames == "frames" else COLOR_BLANK_BG
    assert tuple(cam[400, 100]) == background
    assert not (tmp_path / "live.partial.png").exists()


def test_has_display_needs_a_reachable_x_server(tmp_path):
    from pipeline.view import has_display

    assert not has_display({})
    assert not has_display({"DISPLAY": ""})
    assert not has_display({"DISPLAY": ":4321"})  # no /tmp/.X11-unix/X4321
    assert not has_display({"DISPLAY": "127.0.0.1:4321.0"})  # nothing on port 10321
    assert not has_display({"DISPLAY": "garbage"})
    assert not has_display({"WAYLAND_DISPLAY": "wayland-0"})  # Qt here needs X


def test_has_display_finds_a_listening_x_port():
    import socket

    from pipeline.view import has_display

    for n in range(150, 250):  # a free port 6000 + n stands in for an X server
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 6000 + n))
        except OSError:
            listener.close()
            continue
        try:
            listener.listen(1)
            assert has_display({"DISPLAY": f"127.0.0.1:{n}.0"})
        finally:
            listener.close()
        assert not has_display({"DISPLAY": f"127.0.0.1:{n}.0"})
        return
    pytest.fail("no free port in 6150-6249 to stand in for an X server")


def test_run_viewer_returns_when_its_stop_event_is_set(tmp_path):
    """How run_pipeline.py --view calls it: in a thread or process, stopped by an event."""
    import threading

    from pipeline.view import ViewerSummary, run_viewer

    stop = threading.Event()
    result: list[ViewerSummary] = []
    thread = threading.Thread(target=lambda: result.append(
        run_viewer(f"ipc://{tmp_path}/silent.sock", show=False, stop_event=stop,
                   headless_png=tmp_path / "never.png")))
    thread.start()
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive(), "run_viewer did not stop when its stop_event was set"
    assert result == [ViewerSummary(received=0, dropped=0, rendered=0, pngs_written=0,
                                    statuses=0)]
    assert not (tmp_path / "never.png").exists()  # nothing received, nothing drawn


def test_stream_stats_fps_latencies_and_drops():
    from pipeline.schema import Pose3D
    from pipeline.view import StreamStats

    def pose(frame_id: int, t_capture_ns: int) -> Pose3D:
        return Pose3D(
            frame_id=frame_id, t_capture_ns=t_capture_ns,
            stamps=(("capture", t_capture_ns, t_capture_ns + 1_000_000),
                    ("output", t_capture_ns + 30_000_000, t_capture_ns + 31_000_000)),
            image_size=(640, 480), people=(person(),),
        )

    stats = StreamStats(window_s=2.0)
    t0 = 50_000_000_000
    # 25 fps for 1 s, frames 3 and 4 lost upstream; received 40 ms after capture
    ids = [i for i in range(28) if i not in (3, 4)]
    for k, i in enumerate(ids):
        t_cap = t0 + i * 40_000_000
        stats.add(pose(i, t_cap), t_cap + 40_000_000)
    snap = stats.snapshot()
    assert snap.dropped == 2 and snap.received == len(ids) and snap.frame_id == 27
    assert snap.latency_ms == pytest.approx(40.0)
    assert snap.pipeline_ms == pytest.approx(31.0)
    # 26 poses over 27 frame intervals of 40 ms
    assert snap.fps == pytest.approx(25 / (27 * 0.040))
    # a replay far later: receipt latency is not shown, the pipeline's own still is
    late = StreamStats()
    late.add(pose(0, t0), t0 + 3600 * 10**9)
    assert late.snapshot().latency_ms is None and late.snapshot().pipeline_ms == pytest.approx(31.0)
    # a frame_id that goes back (restart, replay loop) is not a drop
    stats.add(pose(0, t0 + 2 * 10**9), t0 + 2 * 10**9 + 40_000_000)
    assert stats.snapshot().dropped == 2
