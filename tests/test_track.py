"""stages/track.py with synthetic people whose truth is known: crossing paths keep their ids, a
half-second occlusion keeps the id, a newcomer never inherits a departed person's id, ids are
never reused; and the stage on real messages."""

from __future__ import annotations

import numpy as np

from engines.runtime.skeleton import NUM_JOINTS
from pipeline.config import TrackConfig
from pipeline.schema import Keypoints2D, Person2D
from stages.track import Tracker, TrackStage

FPS = 30.0
#: a standing person 200 px tall, joints relative to the pelvis (px, y down)
BODY_PX = np.array(
    [[0, 0], [-15, 0], [-17, 50], [-18, 100], [15, 0], [17, 50], [18, 100], [0, -30], [0, -60],
     [0, -72], [0, -95], [22, -58], [35, -25], [40, 5], [-22, -58], [-35, -25], [-40, 5]],
    dtype=np.float64,
)
CONF = np.full(NUM_JOINTS, 0.9)


def person_at(x: float, y: float = 300.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """(17, 2) px: the body with its pelvis at (x, y), plus 2 px of detector jitter."""
    jitter = 0.0 if rng is None else rng.normal(0, 2.0, BODY_PX.shape)
    return BODY_PX + np.array([x, y]) + jitter


def run(tracker: Tracker, frames: list[list[np.ndarray]]) -> list[list[int]]:
    return [tracker.update(people, [CONF] * len(people), i, int(10**9 + i * 1e9 / FPS))
            for i, people in enumerate(frames)]


def test_two_crossing_paths_keep_their_ids():
    """A walks right, B walks left, 4 px a frame each; their bodies overlap for several frames
    in the middle. Whatever order the detector lists them in, A stays A and B stays B."""
    rng = np.random.default_rng(1)
    frames, truth = [], []
    for i in range(60):
        a, b = person_at(200 + 4 * i, rng=rng), person_at(440 - 4 * i, rng=rng)
        if i % 2:  # the detector's order changes from frame to frame
            frames.append([b, a])
            truth.append(["B", "A"])
        else:
            frames.append([a, b])
            truth.append(["A", "B"])
    ids = run(Tracker(), frames)
    who = {}
    for frame_ids, names in zip(ids, truth):
        for tid, name in zip(frame_ids, names):
            assert who.setdefault(name, tid) == tid, f"{name} changed id"
    assert who["A"] != who["B"] and sorted(who.values()) == [1, 2]


def test_a_half_second_occlusion_keeps_the_id():
    rng = np.random.default_rng(2)
    frames = [[person_at(300 + 2 * i, rng=rng)] for i in range(20)]
    frames += [[] for _ in range(15)]  # 0.5 s hidden (at 30 fps)
    frames += [[person_at(300 + 2 * i, rng=rng)] for i in range(35, 55)]  # walked on meanwhile
    ids = run(Tracker(), frames)
    assert {tid for f in ids for tid in f} == {1}


def test_a_newcomer_gets_a_new_id_and_ids_are_never_reused():
    """A leaves; 1.5 s later B comes in where A was: B gets a new id. Then B leaves and C
    comes: a third id, never one of the earlier."""
    rng = np.random.default_rng(3)
    frames = [[person_at(300, rng=rng)] for _ in range(20)]
    frames += [[] for _ in range(45)]  # 1.5 s: A's track ends (longer than max_age_s)
    frames += [[person_at(305, rng=rng)] for _ in range(20)]
    frames += [[] for _ in range(45)]
    frames += [[person_at(310, rng=rng)] for _ in range(5)]
    tracker = Tracker(max_age_s=1.0)
    ids = run(tracker, frames)
    seen = [f[0] for f in ids if f]
    assert seen == [1] * 20 + [2] * 20 + [3] * 5
    assert tracker.ended == 2


def test_someone_far_away_is_not_matched_to_a_track():
    """A person appearing across the image in the next frame is a new person, not a jump."""
    ids = run(Tracker(), [[person_at(200)], [person_at(200)], [person_at(900)]])
    assert ids == [[1], [1], [2]]


def test_a_detection_sliding_onto_a_neighbour_starts_a_new_id():
    """Two people 100 px apart (half a body height). One frame the detector reports only the
    right one; the next frame only the left one again (they never moved): the gate keeps
    each on their own id, no id hops across."""
    left, right = person_at(300), person_at(400)
    ids = run(Tracker(), [[left, right], [left, right], [right], [left], [left, right]])
    assert ids == [[1, 2], [1, 2], [2], [1], [1, 2]]


def test_the_stage_names_the_people_of_real_messages():
    stage = TrackStage(TrackConfig())
    stage.open()
    try:
        def msg(i: int, xs: list[float]) -> Keypoints2D:
            return Keypoints2D(
                frame_id=i, t_capture_ns=10**9 + i * 33_000_000, image_size=(1280, 720),
                people=tuple(Person2D(track_id=0, joints_2d_px=person_at(x).astype(np.float32),
                                      confidence=CONF.astype(np.float32)) for x in xs))
        out = [stage.process(msg(i, [200 + 3 * i, 800 - 3 * i])) for i in range(10)]
    finally:
        stage.close()
    assert [[p.track_id for p in m.people] for m in out] == [[1, 2]] * 10
    assert out[3].people[0].joints_2d_px.dtype == np.float32  # the person's data untouched
    np.testing.assert_array_equal(out[3].people[0].joints_2d_px, person_at(209))
