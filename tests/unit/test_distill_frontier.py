"""The frontier plot's bookkeeping: sessions pooled per model, labels kept off the markers."""

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "distill_frontier.py"
spec = importlib.util.spec_from_file_location("distill_frontier", SCRIPT)
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


def test_a_model_benched_in_two_sessions_is_one_point_with_every_round():
    # (session, name, test, texts/s per round, ratio per round, bytes, val)
    rows = [
        ("s1", "bundled", 0.90, [100, 100], [1.0, 1.0], 24, None),
        ("s1", "run4/a", 0.93, [90, 95], [0.90, 0.95], 26, 0.92),
        ("s2", "bundled", 0.90, [200, 200], [1.0, 1.0], 24, None),
        ("s2", "run4/a", 0.93, [190, 210], [0.95, 1.05], 26, 0.92),
        ("s2", "run5/b", 0.94, [180, 200], [0.90, 1.00], 26, 0.93),
    ]
    pooled = frontier.pool_sessions(rows)
    assert sorted(pooled) == ["bundled", "run4/a", "run5/b"]
    assert pooled["run4/a"] == (0.93, 26, [0.90, 0.95, 0.95, 1.05])
    assert pooled["run5/b"][2] == [0.90, 1.00]


def test_labels_of_points_that_nearly_coincide_cover_no_other_marker_and_no_other_label():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    points = [(0.94, 93.32, "run4/l2_e8_6ep (27 MB)", 160), (0.98, 93.33, "run5/l2_e8_4ep (27 MB)", 160)]
    points += [(0.96, 93.12, "run4/l2_e8_4ep (27 MB)", 160), (0.97, 93.18, "run2/l2_e8 (27 MB)", 160)]
    for x, y, _, area in points:
        ax.scatter(x, y, s=area)
    ax.set_xlim(0.3, 1.5)
    ax.set_ylim(90.5, 93.8)
    fig.tight_layout()
    boxes = frontier.place_labels(fig, ax, points)
    centres = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    for i, box in enumerate(boxes):
        assert not any(box.contains(*c) for j, c in enumerate(centres) if j != i), points[i][2]
        assert not any(box.overlaps(other) for j, other in enumerate(boxes) if j != i), points[i][2]
    plt.close(fig)
