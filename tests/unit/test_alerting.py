"""Alert merging: repeats for one group within the cooldown become one alert."""

from __future__ import annotations

from agents.alerting import merge_alert


def alert(task: str, group: str, level: str, at_s: float, score: float = 0.8) -> dict[str, object]:
    return {
        "task_id": task,
        "group_id": group,
        "level": level,
        "score": score,
        "summary": task,
        "raised_at": at_s * 1000,
        "camera_id": "c",
    }


def test_a_new_group_is_published():
    recent, publish = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    assert publish and recent[0]["count"] == 1


def test_repeats_within_the_cooldown_merge_and_publish_only_on_escalation():
    recent, _ = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    recent, publish = merge_alert(recent, alert("t2", "g1", "high", 130, score=0.82), 60, 100)
    assert not publish and len(recent) == 1 and recent[0]["count"] == 2 and recent[0]["score"] == 0.82
    recent, publish = merge_alert(recent, alert("t3", "g1", "critical", 150, score=0.95), 60, 100)
    assert publish and len(recent) == 1 and recent[0]["level"] == "critical" and recent[0]["count"] == 3


def test_after_the_cooldown_or_for_another_group_a_new_alert_is_raised():
    recent, _ = merge_alert([], alert("t1", "g1", "high", 100), 60, 100)
    recent, publish = merge_alert(recent, alert("t2", "g2", "high", 101), 60, 100)
    assert publish and len(recent) == 2
    recent, publish = merge_alert(recent, alert("t3", "g1", "high", 200), 60, 100)
    assert publish and len(recent) == 3 and recent[0]["task_id"] == "t3"


def test_only_the_last_alerts_are_kept():
    recent: list[dict[str, object]] = []
    for i in range(120):
        recent, _ = merge_alert(recent, alert(f"t{i}", f"g{i}", "high", i), 60, 100)
    assert len(recent) == 100 and recent[0]["task_id"] == "t119"
