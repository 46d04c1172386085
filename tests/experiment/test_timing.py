"""The stage timer charges each second to the innermost running stage and merges across processes."""

import time

from qgeom.experiment.timing import StageTimer


def test_nested_stages_are_exclusive_and_merge():
    t = StageTimer()
    start = time.perf_counter()
    with t.stage("outer"):
        time.sleep(0.02)
        with t.stage("inner"):
            time.sleep(0.03)
        time.sleep(0.01)
    wall = time.perf_counter() - start
    assert t.counts == {"inner": 1, "outer": 1}
    assert t.seconds["inner"] >= 0.03 and t.seconds["outer"] >= 0.03
    assert abs(t.seconds["inner"] + t.seconds["outer"] - wall) < 1e-3  # nothing counted twice
    other = StageTimer()
    other.merge(t.state())
    other.merge(t.state())
    assert other.counts["inner"] == 2 and abs(other.seconds["outer"] - 2 * t.seconds["outer"]) < 1e-12
    assert {r["stage"] for r in other.table()} == {"inner", "outer"}
