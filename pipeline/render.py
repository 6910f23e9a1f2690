"""Pure drawing for the live viewer: one Pose3D's worth of data (everyone in a frame) in, one
BGR image out. Each person's bones take a colour of their own, from their track id
(`track_color`), with the id written beside the head; joints keep their body-side colour.

Layout of the image `render` returns, `(H, W, 3)` uint8 BGR with `H = style.height_px`:

    +------------------------------+------------------+
    | camera frame (or blank),     | 3D skeleton seen |
    | 2D skeleton drawn on it,     | from a slowly    |
    | scaled to height H           | orbiting camera  |
    | fps / latency / drops text   | (H x H)          |
    +------------------------------+------------------+

No windows, sockets or clocks here: `pipeline/view.py` gathers the numbers and shows the
image; a test renders to PNG and checks pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engines.runtime.skeleton import BONES, JOINT_NAMES, NUM_JOINTS, ROOT, Joint

#: BGR colours by body side; a bone takes its child joint's side.
COLOR_LEFT: tuple[int, int, int] = (255, 160, 40)  # blue-ish
COLOR_RIGHT: tuple[int, int, int] = (40, 140, 255)  # orange
COLOR_CENTRE: tuple[int, int, int] = (80, 220, 80)  # green
COLOR_TEXT: tuple[int, int, int] = (255, 255, 255)
COLOR_GRID: tuple[int, int, int] = (90, 90, 90)
COLOR_PANEL_BG: tuple[int, int, int] = (30, 30, 30)
COLOR_BLANK_BG: tuple[int, int, int] = (0, 0, 0)


def joint_colors() -> tuple[tuple[int, int, int], ...]:
    """(J,) BGR colour of each joint: left side, right side or centre line."""
    out = []
    for name in JOINT_NAMES:
        if name.startswith("l_"):
            out.append(COLOR_LEFT)
        elif name.startswith("r_"):
            out.append(COLOR_RIGHT)
        else:
            out.append(COLOR_CENTRE)
    return tuple(out)


JOINT_COLORS: tuple[tuple[int, int, int], ...] = joint_colors()

#: BGR bone colours of tracks, by track_id modulo their number (distinct, bright on black)
TRACK_COLORS: tuple[tuple[int, int, int], ...] = (
    (80, 220, 80), (255, 120, 60), (60, 200, 255), (220, 80, 220), (255, 230, 80),
    (80, 255, 230), (120, 120, 255), (200, 200, 200),
)


def track_color(track_id: int) -> tuple[int, int, int]:
    """The BGR colour a track's bones are drawn in (the same id, the same colour)."""
    return TRACK_COLORS[int(track_id) % len(TRACK_COLORS)]


@dataclass(frozen=True)
class ViewStats:
    """The numbers printed on the image. None: unknown (shown as "-").

    fps: messages per second received. latency_ms: end-to-end, capture to receipt, ms.
    pipeline_ms: capture to publish, ms, from the message's stamps.
    dropped: frames lost upstream (gaps in frame_id). received: messages shown so far.
    """

    fps: float | None = None
    latency_ms: float | None = None
    pipeline_ms: float | None = None
    dropped: int = 0
    received: int = 0
    frame_id: int | None = None
    people: int | None = None  # people in the frame shown (None: unknown)
    engine_id: str = ""
    note: str = ""  # e.g. the last Status message


@dataclass(frozen=True)
class RenderStyle:
    """How the picture looks. Tuning: orbit_period_s sets how fast the 3D view turns."""

    height_px: int = 480  # output height; the camera panel keeps the frame's aspect ratio
    min_confidence: float = 0.3  # joints below this are not drawn (nor their bones)
    orbit_period_s: float = 20.0  # one full turn of the 3D view
    elevation_deg: float = 15.0  # 3D view looks down on the skeleton by this much
    metres_across_panel: float = 2.6  # 3D panel shows this many metres across its height
    line_px: int = 3  # bone thickness in the camera panel (scaled frames keep this)
    joint_radius_px: int = 4


def orbit_azimuth_rad(t_s: float, style: RenderStyle = RenderStyle()) -> float:
    """The 3D view's azimuth at time t_s: 0 looks along the real camera's axis."""
    return 2.0 * math.pi * (t_s / style.orbit_period_s)


def project_orbit_points(
    points_m: np.ndarray,
    centre_m: np.ndarray,
    t_s: float,
    panel_px: int,
    style: RenderStyle = RenderStyle(),
) -> tuple[np.ndarray, np.ndarray]:
    """Where 3D points land in the square 3D panel.

    points_m: (N, 3) metres, camera frame (+X right, +Y down, +Z forward). centre_m: (3,) the
    point put at the panel's centre. The points are turned about the vertical through centre_m
    by `orbit_azimuth_rad(t_s)`, tilted down by `style.elevation_deg` and projected
    orthographically, `panel_px / style.metres_across_panel` pixels per metre.
    Returns (xy_px (N, 2) float64 panel pixels, depth_m (N,) larger = farther from the viewer).
    At azimuth 0 and elevation 0 the panel shows what the real camera sees (x right, y down).
    """
    rel = np.asarray(points_m, dtype=np.float64) - np.asarray(centre_m, dtype=np.float64)
    a = orbit_azimuth_rad(t_s, style)
    e = math.radians(style.elevation_deg)
    ca, sa, ce, se = math.cos(a), math.sin(a), math.cos(e), math.sin(e)
    x = ca * rel[:, 0] - sa * rel[:, 2]
    z = sa * rel[:, 0] + ca * rel[:, 2]
    y = ce * rel[:, 1] + se * z  # +Y is down: tilting the view down lifts far points
    depth = -se * rel[:, 1] + ce * z
    scale = panel_px / style.metres_across_panel
    xy = np.stack([panel_px / 2 + scale * x, panel_px / 2 + scale * y], axis=1)
    return xy, depth


def project_orbit(
    joints_3d_m: np.ndarray, t_s: float, panel_px: int, style: RenderStyle = RenderStyle()
) -> tuple[np.ndarray, np.ndarray]:
    """project_orbit_points for a skeleton (J, 3) metres, centred on its root (pelvis)."""
    joints = np.asarray(joints_3d_m, dtype=np.float64)
    return project_orbit_points(joints, joints[ROOT], t_s, panel_px, style)


def _draw_skeleton(
    canvas: np.ndarray,
    xy_px: np.ndarray,
    visible: np.ndarray,
    line_px: int,
    radius_px: int,
    order: np.ndarray | None = None,
    bone_color: tuple[int, int, int] | None = None,
) -> None:
    """Draw bones then joints of visible joints onto canvas in place (anti-aliased).

    xy_px: (J, 2) px. visible: (J,) bool. order: bone indices to draw in (back to front).
    bone_color: every bone in this colour (a track's); None: each bone its child's side colour.
    """
    shift = 4  # sub-pixel coordinates for cv2 drawing
    pts = np.round(np.nan_to_num(xy_px) * (1 << shift)).astype(np.int64)  # hidden if not finite
    bone_order = range(len(BONES)) if order is None else order
    for b in bone_order:
        child, parent = BONES[b]
        if visible[child] and visible[parent]:
            cv2.line(
                canvas, tuple(map(int, pts[child])), tuple(map(int, pts[parent])),
                JOINT_COLORS[child] if bone_color is None else bone_color, line_px,
                cv2.LINE_AA, shift,
            )
    for j in range(NUM_JOINTS):
        if visible[j]:
            cv2.circle(canvas, tuple(map(int, pts[j])), radius_px << shift, JOINT_COLORS[j],
                       -1, cv2.LINE_AA, shift)


def _text_lines(stats: ViewStats) -> list[str]:
    fps = "-" if stats.fps is None else f"{stats.fps:.1f}"
    lat = "-" if stats.latency_ms is None else f"{stats.latency_ms:.0f} ms"
    pipe = "" if stats.pipeline_ms is None else f"   pipeline {stats.pipeline_ms:.0f} ms"
    lines = [
        f"fps {fps}   latency {lat}{pipe}",
        f"dropped {stats.dropped}   shown {stats.received}",
    ]
    if stats.frame_id is not None:
        engine = f"   engine {stats.engine_id}" if stats.engine_id else ""
        lines.append(f"frame {stats.frame_id}{engine}")
    if stats.people == 0:
        lines.append("nobody in view")
    elif stats.people is not None:
        lines.append(f"{stats.people} {'person' if stats.people == 1 else 'people'}")
    if stats.note:
        lines.append(stats.note)
    return lines


def _put_lines(canvas: np.ndarray, lines: list[str], origin: tuple[int, int]) -> None:
    x, y = origin
    for line in lines:
        # a dark outline keeps text readable on any frame
        for color, thickness in (((0, 0, 0), 3), (COLOR_TEXT, 1)):
            cv2.putText(canvas, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, thickness,
                        cv2.LINE_AA)
        y += 22


def camera_panel_size(
    image_size: tuple[int, int], style: RenderStyle = RenderStyle()
) -> tuple[int, int]:
    """(width, height) px of the camera panel for frames of image_size (width, height)."""
    w, h = image_size
    return max(1, round(w * style.height_px / h)), style.height_px


def _label(canvas: np.ndarray, text: str, xy: np.ndarray, color: tuple[int, int, int]) -> None:
    x, y = int(xy[0]) + 6, int(xy[1]) - 6
    for c, thickness in (((0, 0, 0), 3), (color, 1)):
        cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, c, thickness,
                    cv2.LINE_AA)


def render(
    image_bgr: np.ndarray | None,
    people: "Sequence[object]",
    stats: ViewStats,
    t_s: float,
    *,
    image_size: tuple[int, int] | None = None,
    style: RenderStyle = RenderStyle(),
) -> np.ndarray:
    """The viewer's picture for one frame's people.

    image_bgr: (h, w, 3) uint8 camera frame, or None to draw on a black canvas of
    `image_size` (width, height) px (Pose3D messages carry image_size, not the image).
    people: objects with `track_id`, `joints_2d_px` (J, 2) px in that frame, `joints_3d_m`
    (J, 3) metres, camera frame, and `confidence` (J,) in [0, 1] (pipeline.schema.Person3D);
    joints below style.min_confidence are not drawn, nor non-finite ones. Each person's bones
    are drawn in `track_color(track_id)` with the id beside the head, in both panels; the 3D
    panel is centred on the people's mean root and widens to hold them all.
    stats: the numbers to print. t_s: seconds, sets the 3D view's orbit azimuth.
    Returns (style.height_px, camera_panel_width + style.height_px, 3) uint8 BGR.
    Raises ValueError for wrong shapes or neither image nor image_size.
    """
    checked = []
    for person in people:
        j2 = np.asarray(person.joints_2d_px, dtype=np.float64)
        j3 = np.asarray(person.joints_3d_m, dtype=np.float64)
        conf = np.asarray(person.confidence, dtype=np.float64)
        if j2.shape != (NUM_JOINTS, 2) or j3.shape != (NUM_JOINTS, 3):
            raise ValueError(
                f"render needs joints_2d_px ({NUM_JOINTS}, 2) and joints_3d_m ({NUM_JOINTS}, "
                f"3), got {j2.shape} and {j3.shape}"
            )
        if conf.shape != (NUM_JOINTS,):
            raise ValueError(f"confidence must be ({NUM_JOINTS},), got {conf.shape}")
        checked.append((int(person.track_id), j2, j3, conf))
    if image_bgr is not None:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(
                f"image_bgr must be (h, w, 3) uint8, got {image_bgr.shape} {image_bgr.dtype}"
            )
        image_size = (image_bgr.shape[1], image_bgr.shape[0])
    elif image_size is None or min(image_size) < 1:
        raise ValueError("render needs image_bgr or a positive image_size (width, height)")
    H = style.height_px
    cam_w, _ = camera_panel_size(image_size, style)
    scale = H / image_size[1]

    if image_bgr is None:
        cam = np.full((H, cam_w, 3), COLOR_BLANK_BG, np.uint8)
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        cam = cv2.resize(image_bgr, (cam_w, H), interpolation=interp)

    for tid, j2, _, conf in checked:
        visible_2d = (conf >= style.min_confidence) & np.all(np.isfinite(j2), axis=1)
        color = track_color(tid)
        _draw_skeleton(cam, j2 * scale, visible_2d, style.line_px, style.joint_radius_px,
                       bone_color=color)
        if visible_2d[Joint.HEAD]:
            _label(cam, f"#{tid}", j2[Joint.HEAD] * scale, color)
    _put_lines(cam, _text_lines(stats), (10, 24))

    panel = np.full((H, H, 3), COLOR_PANEL_BG, np.uint8)
    placed = [(tid, j3, conf) for tid, _, j3, conf in checked
              if np.all(np.isfinite(j3[ROOT]))]
    if placed:
        roots = np.stack([j3[ROOT] for _, j3, _ in placed])
        centre = roots.mean(axis=0)
        spread = float(np.max(np.linalg.norm(roots - centre, axis=1))) * 2 + 1.2
        view = dataclasses.replace(style, metres_across_panel=max(style.metres_across_panel,
                                                                  spread))
        finite_all = [j3 for _, j3, _ in placed if np.all(np.isfinite(j3))]
        _draw_floor_grid(panel, finite_all[0] if len(placed) == 1 and finite_all else None,
                         t_s, view)
        for tid, j3, conf in placed:
            finite_3d = np.all(np.isfinite(j3), axis=1)
            xy, depth = project_orbit_points(np.where(finite_3d[:, None], j3, 0.0), centre,
                                             t_s, H, view)
            bone_depth = np.array([depth[c] + depth[p] for c, p in BONES])
            visible_3d = finite_3d & (conf >= style.min_confidence)
            color = track_color(tid)
            _draw_skeleton(panel, xy, visible_3d, 2, 3, order=np.argsort(-bone_depth),
                           bone_color=color)
            if visible_3d[Joint.HEAD]:
                _label(panel, f"#{tid}", xy[Joint.HEAD], color)
    else:
        _draw_floor_grid(panel, None, t_s, style)
    az = math.degrees(orbit_azimuth_rad(t_s, style)) % 360
    _put_lines(panel, [f"3D  azimuth {az:3.0f} deg"], (10, 24))
    return np.concatenate([cam, panel], axis=1)


def _draw_floor_grid(
    panel: np.ndarray, joints_3d_m: np.ndarray | None, t_s: float, style: RenderStyle
) -> None:
    """A 2 m x 2 m grid (0.5 m cells) on the floor under the skeleton: the horizontal plane
    through its lowest joint (largest +Y), or 1 m below the centre when there is no pose."""
    if joints_3d_m is None:
        centre, floor_y = np.zeros(3), 1.0
    else:
        centre = joints_3d_m[ROOT]
        floor_y = float(joints_3d_m[:, 1].max() - centre[1])
    ends = []
    for v in np.linspace(-1.0, 1.0, 5):
        ends += [[v, floor_y, -1.0], [v, floor_y, 1.0], [-1.0, floor_y, v], [1.0, floor_y, v]]
    xy, _ = project_orbit_points(np.array(ends) + centre, centre, t_s, panel.shape[0], style)
    pts = np.round(xy).astype(np.int64)
    for k in range(0, len(pts), 2):
        cv2.line(panel, tuple(map(int, pts[k])), tuple(map(int, pts[k + 1])), COLOR_GRID, 1,
                 cv2.LINE_AA)
