"""The records that travel on roadwatch's topics: the topic contract of ``docs/ARCHITECTURE.md``.

Each record is declared once here and imported by the Faust agents and by the detection
producer alike. Every record carries a schema version ``v``; a reader rejects versions it does
not know (to the DLQ) instead of guessing. :func:`decode` is the one way a message body becomes
a record: it checks JSON, schema version, required fields and numeric sanity, and raises
:class:`~streams.errors.InvalidRecord` with a reason the DLQ keeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import faust
import orjson
from faust.models.fields import StringField

from streams import metrics
from streams.errors import InvalidRecord
from streams.faust_seam import record_fields
from streams.vocabulary import ALERT_SOURCES as ALERT_SOURCES
from streams.vocabulary import ALERT_VERDICTS as ALERT_VERDICTS
from streams.vocabulary import CONFLICT_PAIRS as CONFLICT_PAIRS
from streams.vocabulary import RISK_LEVELS as RISK_LEVELS
from streams.vocabulary import TASK_REASONS as TASK_REASONS
from streams.vocabulary import TASK_STATUSES as TASK_STATUSES
from streams.vocabulary import RiskLevel as RiskLevel
from streams.vocabulary import TaskReason as TaskReason
from streams.vocabulary import TaskStatus as TaskStatus

#: Version 2 added ground positions, speeds and conflicts in metres (calibrated cameras), an alert's
#: source and verdict; every field it added has a default, so version 1 records still read.
SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

#: Detection records are a few KB (crops above 4 KB travel by reference); anything near the
#: broker's 1 MiB message limit is not ours.
MAX_MESSAGE_BYTES = 512 * 1024
#: Camera ids become Kafka keys, Redis keys, URL paths and metric labels: a strict alphabet.
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Faust rejects empty strings unless told otherwise; these fields may be empty but must be present.
BLANK_OK: str = StringField(allow_blank=True, required=True)
#: ... and these may be empty or absent.
BLANK_OK_OPTIONAL: str = StringField(allow_blank=True, required=False, default="")


class DetectedObject(faust.Record, serializer="json", include_metadata=False):
    """One tracked object in a frame."""

    #: Tracker id, stable across frames of one camera.
    track_id: int
    #: Class name: person, car, truck, bus, bicycle, motorcycle, object.
    cls: str
    #: Detector confidence 0..1.
    conf: float
    #: Box in pixels, [x1, y1, x2, y2].
    bbox: list[float]
    #: Speed in pixels per second from the tracker (0 for a new track).
    speed: float = 0.0
    #: Calibrated cameras only: position on the ground [x, y] and velocity [vx, vy], metres and m/s.
    ground: list[float] | None = None
    velocity: list[float] | None = None


class Conflict(faust.Record, serializer="json", include_metadata=False):
    """Two road users that came close in time, measured on the ground (models/ssm.py)."""

    #: Track ids of the two road users.
    a: int
    b: int
    #: One of :data:`CONFLICT_PAIRS`.
    pair: str
    #: Time to collision (s) along the predicted paths (models/ssm.py); None when they do not meet.
    ttc_s: float | None = None
    #: Post-encroachment time (s) of a crossing just completed; None when none.
    pet_s: float | None = None
    #: Deceleration that avoids the collision, m/s^2.
    drac_mps2: float = 0.0
    #: Speed of one relative to the other, m/s.
    closing_mps: float = 0.0
    #: The speeds of a and b, m/s.
    speeds_mps: list[float] | None = None
    #: How severe by the thresholds (models/ground_view.conflict_level): a risk level.
    level: str = "low"
    #: Seconds until the camera's next frame: a TTC that reaches its threshold within them is at it already
    #: (models/ssm.measure), so a "medium" conflict may carry a TTC up to the threshold plus this.
    lookahead_s: float = 0.0


class TrafficGroup(faust.Record, serializer="json", include_metadata=False):
    """A cluster of objects close enough to matter together."""

    #: Stable id within the camera, derived from the sorted track ids.
    group_id: str
    #: pedestrian_vehicle, vehicle_cluster, pedestrian_cluster or single.
    kind: str
    #: Indexes into DetectionResult.objects.
    members: list[int]
    #: Sorted track ids of the members (the dedup key of the task generator).
    track_ids: list[int]
    #: Box around the members, [x1, y1, x2, y2].
    bbox: list[float]
    #: Smallest gap between a pedestrian and a vehicle, in units of the pedestrian's height.
    min_gap: float | None = None
    #: How interesting the group is for a VLM call, 0..1.
    interest: float = 0.0


class ImageRef(faust.Record, serializer="json", include_metadata=False):
    """A JPEG crop, either inline (base64) or by reference to the image store (claim-check)."""

    #: Base64 JPEG when small enough to travel inline.
    data_b64: str | None = None
    #: Reference into the image store (file://... or redis://...) otherwise.
    uri: str | None = None
    #: Width and height of the crop in pixels.
    width: int = 0
    height: int = 0
    #: Size of the JPEG in bytes.
    size: int = 0
    #: The frame region the crop shows, [x1, y1, x2, y2] in frame pixels (to draw boxes on it).
    region: list[float] | None = None


class DetectionResult(faust.Record, serializer="json", include_metadata=False):
    """What the detection producer saw in one analysed frame of one camera."""

    camera_id: str
    frame_seq: int
    #: Capture time, UTC epoch milliseconds.
    captured_at: float
    frame_w: int
    frame_h: int
    #: Detector backend and model, e.g. motion/mog2 or yolo/yolo11n.pt.
    model: str
    objects: list[DetectedObject]
    groups: list[TrafficGroup]
    #: Crops per group_id.
    crops: dict[str, ImageRef]
    #: When the producer sent it, UTC epoch milliseconds.
    produced_at: float = 0.0
    #: The producer process's run (a restart starts a new one and counts frames from 0 again);
    #: empty in records of producers older than the field.
    run: str = BLANK_OK_OPTIONAL
    #: Calibrated cameras only: the conflicts measured in this frame, most urgent first.
    conflicts: list[Conflict] | None = None
    v: int = SCHEMA_VERSION

    @property
    def run_key(self) -> str:
        """The producer run this frame is of: ``run``, or for a producer that sends none, the frame's
        capture time. Such a producer counts frames from 0 again when it restarts: its frame 3 made
        the task ids (and detection id) its previous run's frame 3 had, and the aggregator dropped
        their results as already seen for an hour. A redelivered record keeps its capture time, so
        its ids stay the same."""
        return self.run or f"t{float(self.captured_at):.3f}"

    @property
    def detection_id(self) -> str:
        """Identity of the detection: camera, producer run (:attr:`run_key`) and frame number."""
        return f"{self.camera_id}:{self.run_key}:{self.frame_seq}"


class AssessmentTask(faust.Record, serializer="json", include_metadata=False):
    """One group worth a VLM call."""

    #: Deterministic: the same camera, frame and group always give the same id.
    task_id: str
    camera_id: str
    detection_id: str
    frame_seq: int
    captured_at: float
    group: TrafficGroup
    image: ImageRef
    #: Why the task was made: one of :data:`TaskReason`.
    reason: str
    created_at: float
    #: After this (epoch ms) the task is expired instead of assessed.
    deadline: float
    #: The conflict that made it (reason ``conflict``): its measures go into the VLM's prompt.
    conflict: Conflict | None = None
    v: int = SCHEMA_VERSION


class RiskAssessment(faust.Record, serializer="json", include_metadata=False):
    """The outcome of one task; failed and expired tasks are results too."""

    task_id: str
    camera_id: str
    detection_id: str
    group_id: str
    #: One of :data:`TaskStatus`.
    status: str
    risk_level: str
    risk_score: float
    #: The model's one-sentence reason (may be empty: a failed task has none).
    summary: str = BLANK_OK
    model: str = StringField(required=True)
    #: Alias of the key that answered (never the key); empty when no key was used.
    key_alias: str = BLANK_OK
    attempts: int
    #: Duration of the successful VLM call itself, ms.
    latency_ms: float
    captured_at: float
    completed_at: float
    #: Time spent waiting for a key, ms.
    queue_ms: float = 0.0
    error: str | None = None
    #: The provider account whose quota the answering call spent (a configured name, never a key).
    account: str = BLANK_OK_OPTIONAL
    #: Tokens of the answering call as the provider counted them (its ``usage``), and their cost by
    #: the configured price table (0 without one).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    #: Status ``measured``: the conflict that is the whole judgement.
    conflict: Conflict | None = None
    v: int = SCHEMA_VERSION


class Alert(faust.Record, serializer="json", include_metadata=False):
    """A result at or above the alert level."""

    task_id: str
    camera_id: str
    level: str
    score: float
    summary: str = BLANK_OK
    group_id: str = StringField(required=True)
    detection_id: str
    raised_at: float
    #: When the frame that raised it was captured, epoch ms (0 in version 1 records).
    captured_at: float = 0.0
    #: One of :data:`ALERT_SOURCES`: ``measured`` alerts go out before any VLM answer.
    source: str = "vlm"
    #: One of :data:`ALERT_VERDICTS`: what the VLM's answer did to a measured alert.
    verdict: str = BLANK_OK_OPTIONAL
    #: The measured conflict behind a ``measured`` alert.
    conflict: Conflict | None = None
    v: int = SCHEMA_VERSION


#: Every record type of the contract, one per topic.
RECORD_TYPES: tuple[type[faust.Record], ...] = (DetectionResult, AssessmentTask, RiskAssessment, Alert)


def make_task_id(camera_id: str, frame_seq: int, group_id: str, run: str = "") -> str:
    """Deterministic task id, so a replayed detection makes the same task; a restarted producer's
    frames (a new ``run``) make new ones."""
    ident = f"{camera_id}|{frame_seq}|{group_id}" + (f"|{run}" if run else "")
    digest = hashlib.sha1(ident.encode(), usedforsecurity=False)
    return digest.hexdigest()[:20]


def urgency(ttc_s: float | None, pet_s: float | None) -> float:
    """How soon a conflict is, in seconds: the smaller of its TTC and PET (inf without either)."""
    return min(v for v in (ttc_s, pet_s, math.inf) if v is not None)


def describe_conflict(c: Conflict) -> str:
    """The measured facts of a conflict in words, for the VLM's prompt and a measured result's summary."""
    facts = [f"{c.pair} conflict between road users {c.a} and {c.b}"]
    if c.ttc_s is not None:
        facts.append(f"time to collision {c.ttc_s:.1f} s")
    if c.pet_s is not None:
        facts.append(f"post-encroachment time {c.pet_s:.1f} s")
    if c.speeds_mps:
        facts.append("speeds " + " and ".join(f"{v:.1f} m/s" for v in c.speeds_mps))
    facts.append(f"closing at {c.closing_mps:.1f} m/s")
    if c.drac_mps2:
        facts.append(f"braking needed {c.drac_mps2:.1f} m/s^2")
    return ", ".join(facts)


def risk_rank(level: str) -> int:
    """Order of a risk level; unknown levels rank below none."""
    return RISK_LEVELS.index(level) if level in RISK_LEVELS else -1


R = TypeVar("R", bound=faust.Record)


#: No number in a record is larger (ids, sequence numbers, epoch ms, pixels): 2**53, exact in JSON.
MAX_NUMBER = 2**53
#: No record nests deeper (DetectionResult.crops.<id>.region is 4 levels).
MAX_DEPTH = 12


def _numbers_ok(root: Any) -> bool:
    """Every number finite and within :data:`MAX_NUMBER`, nothing deeper than :data:`MAX_DEPTH`:
    the common case, checked level by level without building the paths an error message needs."""
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        deeper: list[Any] = []
        for value in level:
            kind = type(value)
            if kind is float or kind is int:
                if not -MAX_NUMBER <= value <= MAX_NUMBER:  # NaN fails the comparison too
                    return False
            elif kind is dict:
                deeper.extend(value.values())
            elif kind is list:
                deeper.extend(value)
        if not deeper:
            return True
        level = deeper
    return False


def _check_numbers(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRecord(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRecord(f"{path}: not a finite number ({value})")
    if isinstance(value, int | float) and abs(value) > MAX_NUMBER:
        raise InvalidRecord(f"{path}: number out of range ({str(value)[:40]})")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{path}[{i}]", depth + 1)


def _check_box(box: list[float], where: str) -> None:
    if len(box) != 4:
        raise InvalidRecord(f"{where}: bbox needs 4 numbers, got {len(box)}")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1 or min(box) < -1:
        raise InvalidRecord(f"{where}: bbox {box} is not x1<=x2, y1<=y2, non-negative")


def validate(record: faust.Record) -> None:
    """Semantic checks Faust's type coercion does not make."""
    camera_id = getattr(record, "camera_id", None)
    if isinstance(camera_id, str) and not CAMERA_ID.match(camera_id):
        raise InvalidRecord(f"camera id {camera_id[:80]!r} is not 1-64 of letters, digits, '_', '.', '-'")
    if isinstance(record, DetectionResult):
        if record.frame_w <= 0 or record.frame_h <= 0 or record.frame_seq < 0:
            raise InvalidRecord(f"frame size/seq must be positive: {record.frame_w}x{record.frame_h}")
        for i, obj in enumerate(record.objects):
            _check_box(obj.bbox, f"objects[{i}]")
            if not 0 <= obj.conf <= 1:
                raise InvalidRecord(f"objects[{i}].conf {obj.conf} outside 0..1")
            for name in ("ground", "velocity"):  # x and y in metres: one number raised on every frame
                pair = getattr(obj, name)
                if pair is not None and len(pair) != 2:
                    raise InvalidRecord(f"objects[{i}].{name} needs 2 numbers, got {len(pair)}")
        for group in record.groups:
            _check_box(group.bbox, f"group {group.group_id}")
            if any(m < 0 or m >= len(record.objects) for m in group.members):
                raise InvalidRecord(f"group {group.group_id}: member index outside objects")
        for conflict in record.conflicts or []:
            _check_conflict(conflict)
        for group_id, ref in record.crops.items():
            _check_ref(ref, f"crops[{group_id[:40]!r}]")
    elif isinstance(record, RiskAssessment):
        if isinstance(camera_id, str) and not record.detection_id.startswith(camera_id + ":"):
            # the join would label this camera's result with another camera's frame
            raise InvalidRecord(f"detection id {record.detection_id[:80]!r} is not of camera {camera_id!r}")
        if record.attempts < 0 or record.latency_ms < 0:
            raise InvalidRecord("attempts and latency must not be negative")
        if record.risk_level not in RISK_LEVELS:
            raise InvalidRecord(f"risk_level {record.risk_level!r} not one of {RISK_LEVELS}")
        if not 0 <= record.risk_score <= 1:
            raise InvalidRecord(f"risk_score {record.risk_score} outside 0..1")
        if record.status not in TASK_STATUSES:
            raise InvalidRecord(f"status {record.status!r} not one of {TASK_STATUSES}")
        if record.prompt_tokens < 0 or record.completion_tokens < 0 or not 0 <= record.cost < 1e9:
            raise InvalidRecord("tokens and cost must not be negative")
        if record.conflict is not None:
            _check_conflict(record.conflict)
    elif isinstance(record, AssessmentTask):
        if record.reason not in TASK_REASONS:
            raise InvalidRecord(f"reason {record.reason!r} not one of {TASK_REASONS}")
        _check_ref(record.image, "image")
        if record.conflict is not None:
            _check_conflict(record.conflict)
    elif isinstance(record, Alert):
        if record.level not in RISK_LEVELS:
            raise InvalidRecord(f"level {record.level!r} not one of {RISK_LEVELS}")
        if record.source not in ALERT_SOURCES or record.verdict not in ALERT_VERDICTS:
            raise InvalidRecord(f"alert source {record.source!r} / verdict {record.verdict!r} unknown")
        if record.conflict is not None:
            _check_conflict(record.conflict)


def _check_ref(ref: ImageRef, where: str) -> None:
    if not ref.data_b64 and not ref.uri:
        raise InvalidRecord(f"{where}: neither inline data nor a URI")
    if min(ref.width, ref.height, ref.size) < 0:
        raise InvalidRecord(f"{where}: negative size {ref.width}x{ref.height}, {ref.size} bytes")
    if ref.region is not None:
        _check_box(ref.region, where)


def _check_conflict(conflict: Conflict) -> None:
    if conflict.pair not in CONFLICT_PAIRS or conflict.level not in RISK_LEVELS:
        raise InvalidRecord(f"conflict pair {conflict.pair!r} / level {conflict.level!r} unknown")
    for name in ("ttc_s", "pet_s"):
        value = getattr(conflict, name)
        if value is not None and not 0 <= value < 1e4:
            raise InvalidRecord(f"conflict {name} {value} must be 0 or more seconds")
    if len(conflict.speeds_mps or []) > 2:  # the two road users' (it goes into alerts and prompts)
        raise InvalidRecord(f"conflict speeds: {len(conflict.speeds_mps or [])} numbers, 2 at most")


def decode(record_type: type[R], body: bytes | None) -> R:
    """Turn a raw message body into a validated record, or raise InvalidRecord.

    Whatever a body holds, the only exception that leaves is :class:`InvalidRecord`: a wrong type
    deep in a record, or JSON nested 100,000 levels deep, must not crash the agent reading it.
    """
    try:
        return _decode(record_type, body)
    except InvalidRecord:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
        raise InvalidRecord(f"{record_type.__name__}: {type(exc).__name__}: {str(exc)[:300]}") from None


def _decode(record_type: type[R], body: bytes | None) -> R:
    if body is None:
        raise InvalidRecord("empty message (tombstone)")
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidRecord(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(f"not UTF-8: {exc}") from exc
    try:
        data = orjson.loads(text)
    except ValueError:
        data = _loads_explained(text)  # orjson refuses NaN and 65-bit integers: say which, as json does
    if not isinstance(data, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(data).__name__}")
    return _from_data(record_type, data)


def _loads_explained(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRecord(f"invalid JSON: {exc}") from exc


def _from_data(record_type: type[R], data: dict[str, Any]) -> R:
    version = data.get("v", SCHEMA_VERSION)
    if type(version) is not int or version < min(SUPPORTED_VERSIONS):
        raise InvalidRecord(f"schema version {version!r} not supported (expected one of {SUPPORTED_VERSIONS})")
    if version > SCHEMA_VERSION:
        # a newer writer (a rolling upgrade that starts with the producers): read for the fields
        # this version knows, when they are all there, and counted; refused, every record of it
        # went to the dead-letter topic until the readers caught up
        metrics.records_newer_schema_total.labels(record=record_type.__name__).inc()
    fields, defaults = record_fields(record_type)
    missing = [name for name in fields if name not in defaults and name not in data]
    if missing:
        raise InvalidRecord(f"{record_type.__name__}: missing fields {missing}")
    if not _numbers_ok(data):
        _check_numbers(data, record_type.__name__)  # says where
        raise InvalidRecord(f"{record_type.__name__}: a number out of range")  # pragma: no cover
    clean = _clean(record_type, data)
    try:
        record = _build(record_type, data) if clean else record_type.from_data(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidRecord(f"{record_type.__name__}: {exc}") from exc
    if not clean:
        _check_types(record)
        # Faust's validation lets much through (a camera id of 5, a frame_seq of 1.5, a member
        # index of 0.5) that fails later, mid-handling: what it built must be as exact as the
        # fast path requires
        if not _clean(record_type, orjson.loads(to_bytes(record))):
            raise InvalidRecord(f"{record_type.__name__}: a field of the wrong type")
    validate(record)
    return record


Check = Callable[[Any], bool]


def _is_str(value: Any) -> bool:
    return type(value) is str and value != ""


def _is_str_or_blank(value: Any) -> bool:
    return type(value) is str


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) is float or type(value) is int


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _check_for(annotation: Any, descriptor: Any = None) -> Check | None:
    """A predicate for JSON values Faust's validation certainly accepts as ``annotation`` (None:
    no quick answer for this type). Stricter than Faust where that is simpler: an empty string or
    a number given as text is not clean, and takes the full path."""
    if annotation is str:
        return _is_str_or_blank if getattr(descriptor, "allow_blank", False) else _is_str
    if annotation is int:
        return _is_int
    if annotation is float:
        return _is_number
    if annotation is bool:
        return _is_bool
    if isinstance(annotation, type) and issubclass(annotation, faust.Record):
        nested = annotation
        return lambda value: type(value) is dict and _clean(nested, value)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1 and (item := _check_for(args[0])) is not None:
        each = item
        return lambda value: type(value) is list and all(each(v) for v in value)
    if origin is dict and args[:1] == (str,) and (item := _check_for(args[1])) is not None:
        member = item
        return lambda value: type(value) is dict and all(type(k) is str and member(v) for k, v in value.items())
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _check_for(next(a for a in args if a is not type(None)), descriptor)
        if inner is not None:
            present = inner
            return lambda value: value is None or present(value)
    return None


_SCHEMAS: dict[str, dict[str, Check] | None] = {}


def _schema(record_type: type[faust.Record]) -> dict[str, Check] | None:
    """Each record type's field checks, built once (None: a field type without a quick check)."""
    name = f"{record_type.__module__}.{record_type.__qualname__}"
    if name not in _SCHEMAS:
        options = record_type._options  # type: ignore[attr-defined]
        checks = {field: _check_for(tp, options.descriptors.get(field)) for field, tp in options.fields.items()}
        _SCHEMAS[name] = None if any(c is None for c in checks.values()) else typing.cast(dict[str, Check], checks)
    return _SCHEMAS[name]


def _clean(record_type: type[faust.Record], data: dict[str, Any]) -> bool:
    """True when every field of ``data`` is one of ``record_type``'s and has its JSON type exactly:
    then Faust's per-field validation (most of a decode's time) has nothing to find."""
    schema = _schema(record_type)
    if schema is None:
        return False
    for name, value in data.items():
        check = schema.get(name)
        if check is None or not check(value):
            return False
    return True


Build = Callable[[Any], Any]


def _build(record_type: type[R], data: dict[str, Any]) -> R:
    """``record_type.from_data(data)`` for data :func:`_clean` passed, without Faust's generated
    ``__init__``: every field's value goes straight into the instance ``__dict__``, nested records
    built the same way (#13: Faust's per-field descriptors were half of a detection's decode).
    The result equals Faust's, field for field (tests/unit/test_records.py)."""
    builder = _BUILDERS.get(record_type)
    if builder is None:
        builder = _BUILDERS[record_type] = _builder_for(record_type)
    return typing.cast(R, builder(data))


_BUILDERS: dict[type, Build] = {}


def _builder_for(record_type: type[faust.Record]) -> Build:
    options = record_type._options  # type: ignore[attr-defined]
    converts = {name: _convert_for(tp) for name, tp in options.fields.items()}
    defaults = dict(options.defaults)
    optional = frozenset(options.optionalset)
    # fields Faust converts on first access (lazy coercion): built already, so marked evaluated
    lazy = frozenset(n for n, d in options.descriptors.items() if getattr(d, "lazy_coercion", False))
    new = record_type.__new__

    def build(data: dict[str, Any]) -> faust.Record:
        record = new(record_type)
        fields = record.__dict__
        fields["__evaluated_fields__"] = set(lazy)
        for name, convert in converts.items():
            value = data.get(name)
            if value is None and name in optional:
                fields[name] = defaults[name]  # as Faust does: the default object itself
            else:
                fields[name] = value if convert is None else convert(value)
        return record

    return build


def _convert_for(annotation: Any) -> Build | None:
    """How a clean JSON value becomes the field's Python value (None: it is already)."""
    if isinstance(annotation, type) and issubclass(annotation, faust.Record):
        nested = annotation
        return lambda value: _build(nested, value)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1 and (item := _convert_for(args[0])) is not None:
        each = item
        return lambda value: [each(v) for v in value]
    if origin is dict and len(args) == 2 and (member := _convert_for(args[1])) is not None:
        one = member
        return lambda value: {k: one(v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _convert_for(next(a for a in args if a is not type(None)))
        if inner is not None:
            present = inner
            return lambda value: None if value is None else present(value)
    return None


def _check_types(record: faust.Record) -> None:
    """Faust records do not enforce types (nor recurse); a string where a number belongs must not pass."""
    try:
        record.validate_or_raise()
    except Exception as exc:
        raise InvalidRecord(f"{type(record).__name__}: {exc}") from exc
    for name in record_fields(type(record))[0]:
        value = getattr(record, name)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, faust.Record):
                _check_types(child)
            elif isinstance(child, dict):
                raise InvalidRecord(f"{type(record).__name__}.{name}: unexpected object {str(child)[:80]}")


def to_bytes(record: faust.Record) -> bytes:
    """Serialise a record exactly as the agents' topics carry it."""
    body: bytes = record.dumps(serializer="json")
    return body


def record_to_dict(record: faust.Record) -> dict[str, Any]:
    """A plain JSON-able dict of a (nested) record."""
    data: dict[str, Any] = json.loads(record.dumps(serializer="json"))
    return data
