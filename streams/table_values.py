"""The shapes of the values the Faust tables hold (``docs/ARCHITECTURE.md``, "Tables").

Table values are plain JSON, readable in the changelog topics; these ``TypedDict`` types say
what each table's values hold, so the agents and views that read them are type-checked.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class SeenGroup(TypedDict):
    """A group or a (pedestrian, vehicle) pair the task generator assessed."""

    #: When it was last assessed (epoch s).
    at: float
    #: Its gap then, in pedestrian heights (None: no pedestrian-vehicle pair).
    gap: float | None
    #: When it was last seen (epoch s); unseen ones are forgotten.
    last: float


class SeenConflict(TypedDict):
    """A measured conflict between two tracks, as the task generator last acted on it."""

    #: When a VLM task was last made for it (0: never), and the level then.
    task_at: float
    task_level: str
    #: When a measured alert was last raised for it (0: never), and the level then.
    alert_at: float
    alert_level: str
    #: The frame (``frame_key``) that raised that alert: read again, it raises it again, under the
    #: same task id (absent in states written before it was kept).
    alert_frame: NotRequired[str]
    #: When it was last measured (epoch s); unseen ones are forgotten.
    last: float


class CameraState(TypedDict):
    """``camera_state``: the task generator's per-camera state."""

    last_seq: int
    last_at: float
    fps: float
    #: The camera's VLM token bucket (None: full) and when it was last refilled.
    tokens: float | None
    tokens_at: float
    groups: dict[str, SeenGroup]
    pairs: dict[str, SeenGroup]
    groups_seen: int
    tasks_made: int
    skipped: dict[str, int]
    #: "run:frame_seq" -> group ids made into tasks, for redeliveries.
    recent: NotRequired[dict[str, list[str]]]
    #: The producer run whose frames ``last_seq`` counts, and the runs before it (newest last).
    run: NotRequired[str]
    runs: NotRequired[list[str]]
    #: "a~b" (the smaller track id first) -> the measured conflicts of calibrated cameras.
    conflicts: NotRequired[dict[str, SeenConflict]]


class CompactDetection(TypedDict):
    """``detections``: what the result join needs of a detection."""

    at: float
    #: The partition it was written in: it is deleted there (agents/expiry.py).
    p: int
    camera_id: str
    frame_seq: int
    captured_at: float
    frame_w: int
    frame_h: int
    model: str
    objects: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    crops: dict[str, dict[str, Any]]


class ResultEntry(TypedDict):
    """``results``: the aggregator's record of a finished task (a task_id here is a duplicate)."""

    at: float
    p: int
    camera_id: str
    status: str
    risk_level: str
    joined: bool


class CameraView(TypedDict):
    """``camera_view``: a camera's results and its last measured conflict as the web views show
    them (its latest frame is a :class:`CameraFrame`)."""

    camera_id: str
    results: list[dict[str, Any]]
    counts: dict[str, int]
    #: Calibrated cameras: the most urgent conflict measured between two takes of the frame; kept
    #: until the next one (hours, maybe), so written to the table, only when there is a new one.
    last_conflict: NotRequired[dict[str, Any]]
    updated_at: NotRequired[float]


class CameraFrame(TypedDict):
    """A camera's latest frame as the dashboard shows it, held in the memory of the worker that
    owns the camera (``agents.detection_join``), not in a table: the next frame replaces it within
    a second, so its changelog record (one a camera a second) bought nothing a crash would miss."""

    latest_detection: dict[str, Any]
    updated_at: float


class PersistedKey(TypedDict):
    """``key_pool``: a key's shared state, by alias (never the key)."""

    alias: str
    cooldown_until: float
    disabled: bool
    disabled_reason: str
    disabled_until: float | None
    updated_at: float
    #: The operator's switch and its version (records written before it existed lack them).
    operator_disabled: NotRequired[bool]
    operator_version: NotRequired[int]
