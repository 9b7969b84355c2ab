"""Records: round trips, and every way a message body can be wrong ends in InvalidRecord."""

from __future__ import annotations

import json

import pytest
from faust import Record
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.records import detection
from streams.errors import InvalidRecord
from streams.records import Conflict, DetectionResult, RiskAssessment, decode, make_task_id, to_bytes


def test_detection_round_trip_keeps_nested_records():
    det = detection("cam-1", 3)
    back = decode(DetectionResult, to_bytes(det))
    assert back == det
    assert back.detection_id == f"cam-1:t{det.captured_at:.3f}:3"  # no run id: the capture time tells runs apart
    assert back.groups[0].track_ids == [7, 8]


def test_task_id_is_deterministic_and_distinct():
    assert make_task_id("c", 1, "g1-2") == make_task_id("c", 1, "g1-2")
    assert len({make_task_id("c", 1, "g1-2"), make_task_id("c", 2, "g1-2"), make_task_id("d", 1, "g1-2")}) == 3


def _body(**changes: object) -> bytes:
    data = json.loads(to_bytes(detection("cam-1", 1)))
    data.update(changes)
    return json.dumps(data).encode()


def _without(field: str) -> bytes:
    data = json.loads(to_bytes(detection("cam-1", 1)))
    del data[field]
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"camera_id": "c", "frame_seq": 1', "invalid JSON"),  # truncated
        (b"[1, 2]", "expected a JSON object"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"<html><body>502 Bad Gateway</body></html>", "invalid JSON"),
        (_body(v=0), "schema version"),
        (_body(v=True), "schema version"),
        (_without("objects"), "missing fields"),
        (_body(frame_w="wide"), "frame_w"),
        (_body(frame_w=-5), "positive"),
        (_body(captured_at=float("nan")), "not a finite number"),
        (_body(captured_at=float("inf")), "not a finite number"),
        (_body(objects=[{"track_id": 1, "cls": "car", "conf": 3.0, "bbox": [1, 2, 3, 4]}]), "conf"),
        (_body(objects=[{"track_id": 1, "cls": "car", "conf": 0.5, "bbox": [5, 5, 1, 1]}]), "bbox"),
        (_body(objects=[{"track_id": "x", "cls": "car", "conf": 0.5, "bbox": [1, 2, 3, 4]}]), "track_id"),
        (_body(crops={"g1": "not an image ref"}), "ImageRef"),
        (b"x" * 2_000_001, "exceeds"),
        (None, "tombstone"),
    ],
)
def test_bad_bodies_are_rejected_with_a_reason(body: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode(DetectionResult, body)


def test_result_with_unknown_risk_level_is_rejected():
    body = json.dumps(
        {
            "task_id": "t",
            "camera_id": "c",
            "detection_id": "c:1",
            "group_id": "g",
            "status": "ok",
            "risk_level": "apocalyptic",
            "risk_score": 0.5,
            "summary": "",
            "model": "m",
            "key_alias": "k",
            "attempts": 1,
            "latency_ms": 1.0,
            "captured_at": 1.0,
            "completed_at": 2.0,
        }
    ).encode()
    with pytest.raises(InvalidRecord, match="risk_level"):
        decode(RiskAssessment, body)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=6),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode())
)
def test_decoding_anything_either_succeeds_or_raises_invalid_record(body: bytes) -> None:
    try:
        decode(DetectionResult, body)
    except InvalidRecord:
        pass


def _fields(value: object) -> object:
    """A record's fields as nested plain values with their exact types (what equality would hide)."""
    if isinstance(value, Record):
        for name in value._options.fields:  # Faust converts some fields on first access
            getattr(value, name)
        fields = {k: v for k, v in value.__dict__.items() if k != "__evaluated_fields__"}
        return (type(value).__name__, {k: _fields(v) for k, v in sorted(fields.items())})
    if isinstance(value, list):
        return [_fields(v) for v in value]
    if isinstance(value, dict):
        return {k: _fields(v) for k, v in value.items()}
    if isinstance(value, set):
        return ("set", sorted(value))
    return (type(value).__name__, value)


def _faust_built(record_type: type[Record], body: bytes) -> object:
    return record_type.from_data(json.loads(body))


def _synthetic_detections() -> list[bytes]:
    import random

    from bench.capacity import SyntheticCamera

    crops = [{"uri": f"file:///tmp/crop-{i}.jpg", "width": 80 + i, "height": 60, "size": 900 + i} for i in range(4)]
    cam = SyntheticCamera("cap-0001", random.Random(3), 6, crops)
    return [json.dumps(cam.frame(1.7e12 + 500.0 * i)).encode() for i in range(30)]


def test_the_fast_build_equals_faust_field_for_field():
    """decode() builds clean records without Faust's __init__ (#13): the same fields, values and
    types as Faust's own from_data, for records of every type and the optional fields' edge cases."""
    det = json.loads(to_bytes(detection("cam-1", 4)))
    bodies: list[tuple[type[Record], bytes]] = [(DetectionResult, b) for b in _synthetic_detections()]
    bodies.append((DetectionResult, json.dumps(det).encode()))
    sparse = {k: v for k, v in det.items() if k not in ("conflicts", "run")}  # defaults taken
    sparse["crops"] = {}
    sparse["objects"] = [{"track_id": 1, "cls": "person", "conf": 1, "bbox": [1, 2, 3, 4], "ground": None}]
    sparse["groups"] = []
    bodies.append((DetectionResult, json.dumps(sparse).encode()))  # ints for floats, a None optional
    result = RiskAssessment(
        task_id="t1", camera_id="cam-1", detection_id="cam-1:4", group_id="g1-2", status="measured",
        risk_level="high", risk_score=0.8, summary="s", model="ssm", key_alias="", attempts=0,
        latency_ms=0.0, captured_at=1.0, completed_at=2.0,
        conflict=Conflict(a=1, b=2, pair="pedestrian-vehicle", ttc_s=1.2, speeds_mps=[1.0, 8.0], level="high"),
    )  # fmt: skip
    bodies.append((RiskAssessment, to_bytes(result)))
    for record_type, body in bodies:
        fast = decode(record_type, body)
        assert _fields(fast) == _fields(_faust_built(record_type, body))
        assert fast == _faust_built(record_type, body)
        assert to_bytes(fast) == to_bytes(_faust_built(record_type, body))


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("camera_id", 5),
        ("frame_seq", 1.5),
        ("model", {"a": 1}),
        ("frame_w", True),
        ("objects.track_id", 1.5),
        ("groups.members", [0.5]),
        ("groups.track_ids", "ab"),
        ("crop.width", -3),
        ("crop.region", [1.0, 2.0]),
        ("crop.data_b64", None),
        # one number where x and y belong: the join raised IndexError on it, logged every frame
        ("objects.ground", [1.0]),
        ("objects.velocity", [1.0, 2.0, 3.0]),
    ],
)
def test_a_field_of_the_wrong_type_or_a_bad_crop_is_refused_before_any_agent_handles_it(where: str, value: object):
    import orjson

    from sim.records import detection

    data = orjson.loads(to_bytes(detection("cam-a", 1)))
    head, _, field = where.partition(".")
    if not field:
        data[head] = value
    elif head == "crop":
        ref = next(iter(data["crops"].values()))
        ref[field] = value
    else:
        data[head][0][field] = value
    with pytest.raises(InvalidRecord):
        decode(DetectionResult, orjson.dumps(data))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("detection_id", "cam-other:4"),  # the join would label it with another camera's frame
        ("attempts", -1),
        ("latency_ms", -5.0),
        ("conflict", {"a": 1, "b": 2, "pair": "pedestrian-vehicle", "level": "high", "speeds_mps": [1.0] * 10_000}),
    ],
)
def test_a_result_that_cannot_be_what_it_says_is_refused(field: str, value: object) -> None:
    import orjson

    from sim.records import risk_result

    data = orjson.loads(to_bytes(risk_result("cam-1", "t1", detection_id="cam-1:4", group_id="g1-2")))
    decode(RiskAssessment, orjson.dumps(data))  # as made: fine
    data[field] = value
    with pytest.raises(InvalidRecord):
        decode(RiskAssessment, orjson.dumps(data))


def test_a_newer_schema_version_is_read_for_the_fields_this_version_knows() -> None:
    """A rolling upgrade that starts with the producers: every v3 record went to the dead-letter
    topic until the workers were upgraded too."""
    from streams import metrics

    counted = metrics.records_newer_schema_total.labels(record="DetectionResult")
    before = counted._value.get()
    det = decode(DetectionResult, _body(v=3, weather={"rain": True}))
    assert det.camera_id == "cam-1" and counted._value.get() == before + 1
    data = json.loads(_body(v=3))
    del data["objects"]
    with pytest.raises(InvalidRecord, match="missing fields"):  # what this version needs must be there
        decode(DetectionResult, json.dumps(data).encode())
