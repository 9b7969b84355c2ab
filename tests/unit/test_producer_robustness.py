"""The producer keeps going: a camera reader that raises, a stop during a read, a record that
cannot be sent, an image store that is away, a storm of blobs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from models.cameras import CameraConfig
from models.detectors import Detection, Detector
from models.producer import MAX_OBJECTS, CameraPipeline, Producer, analyse
from models.sources import Frame, FrameSource, Grabber, VideoSource, open_source
from streams import metrics
from streams.errors import ConfigError, ImageMissing
from streams.images import FileImageStore, RedisImageStore
from streams.settings import Settings


class Flaky(FrameSource):
    """Raises on its third read; a read takes ``read_s``; records the thread that closes it."""

    def __init__(self, read_s: float = 0.0) -> None:
        self.reads, self.read_s, self.closed_by = 0, read_s, None
        self.interval_s = 0.01

    def read(self) -> np.ndarray | None:
        self.reads += 1
        time.sleep(self.read_s)
        if self.reads == 3:
            raise RuntimeError("decoder fell over")
        return np.zeros((4, 4, 3), np.uint8)

    def close(self) -> None:
        self.closed_by = threading.current_thread().name


def test_a_reader_that_raises_reconnects_and_the_thread_can_be_stopped_and_joined():
    source = Flaky()
    grabber = Grabber("cam-flaky", source, max_backoff_s=0.05)
    grabber.start()
    deadline = time.monotonic() + 5
    while source.reads < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.reads >= 6 and grabber.is_alive()  # it read on after the error
    assert grabber.reconnects == 1
    grabber.stop()
    assert grabber.wait(2.0) and not grabber.is_alive()
    assert source.closed_by == "grab-cam-flaky"  # released by the reader itself, never under a read


def test_a_stop_during_a_slow_read_lets_the_read_finish_before_the_release():
    source = Flaky(read_s=0.3)
    grabber = Grabber("cam-slow", source)
    grabber.start()
    time.sleep(0.05)  # inside the first read
    grabber.stop()
    assert source.closed_by is None  # not released from this thread while the read is under way
    assert grabber.wait(2.0) and source.closed_by == "grab-cam-slow"


def test_a_grabber_never_started_releases_its_source_on_stop():
    source = Flaky()
    Grabber("cam-idle", source).stop()
    assert source.closed_by == threading.current_thread().name


def test_urls_are_read_case_blind_and_never_shown_with_their_password():
    assert isinstance(open_source("RTSP://admin:s3cret@10.0.0.5/stream1"), VideoSource)
    with pytest.raises(ConfigError) as refused:
        open_source("rtmp://admin:s3cret@10.0.0.5/live")
    assert "s3cret" not in str(refused.value) and "10.0.0.5" in str(refused.value)


def test_an_image_store_that_is_away_or_a_bad_name_is_a_missing_image(tmp_path):
    with pytest.raises(ImageMissing, match="unreachable"):
        RedisImageStore("redis://127.0.0.1:1/0", 60).get("redis://" + "a" * 40)
    with pytest.raises(ImageMissing):
        FileImageStore(tmp_path, 60).get("file://" + "a" * 300)


class Storm(Detector):
    name = "storm"

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        return [
            Detection(
                "car",
                0.5 + (i % 7) / 100,
                (float(i % 40) * 15, float(i // 40) * 12, float(i % 40) * 15 + 10, float(i // 40) * 12 + 8),
            )
            for i in range(1200)
        ]


def test_a_storm_of_blobs_is_capped_and_the_crops_survive_a_store_that_is_away():
    cam = CameraPipeline(CameraConfig(id="cam-storm", url="sim://scene?seed=1"))
    store = RedisImageStore("redis://127.0.0.1:1/0", 60)  # nothing listens: every stored crop fails
    settings = Settings(inline_image_limit=0)  # every crop would go to the store
    before = metrics.objects_dropped_total.labels(camera_id="cam-storm")._value.get()
    frame = Frame(np.zeros((360, 640, 3), np.uint8), time.time(), 0)
    result = analyse(cam, frame, Storm(), store, settings)
    assert len(result.objects) == MAX_OBJECTS
    assert min(o.conf for o in result.objects) >= 0.5 + 2 / 100  # the least confident left out
    assert metrics.objects_dropped_total.labels(camera_id="cam-storm")._value.get() - before == 1200 - MAX_OBJECTS
    assert result.crops == {}  # the detection still goes out, without crops


class FailingKafka:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        if len(self.sent) == 0:
            self.sent.append(b"")
            raise RuntimeError("broker said no")
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_record_that_cannot_be_sent_is_dropped_and_the_next_goes():
    from sim.records import detection

    async def scenario() -> Producer:
        producer = Producer([], Storm(), Settings())
        producer.kafka = FailingKafka()  # type: ignore[assignment]
        await producer._send("cam-a", detection("cam-a", 1))  # raises inside: counted, not fatal
        assert producer.pending == 0
        await producer._send("cam-a", detection("cam-a", 2))
        huge = detection("cam-a", 3)
        huge.crops = {"g": huge.crops[next(iter(huge.crops))]}
        huge.crops["g"].data_b64 = "A" * (600 * 1024)
        await producer._send("cam-a", huge)  # over the consumers' limit: not sent at all
        await asyncio.sleep(0)
        return producer

    producer = asyncio.run(scenario())
    assert producer.sent == 1 and len(producer.kafka.sent) == 2  # type: ignore[attr-defined]


class Mover(Detector):
    name = "mover"

    def __init__(self) -> None:
        self.n = 0

    def detect(self, camera_id: str, frame: np.ndarray, frame_seq: int, at: float | None = None) -> list[Detection]:
        self.n += 1
        x = 100.0 + 10 * self.n  # 10 px a frame, a frame every 0.5 s: 20 px/s
        return [Detection("car", 0.9, (x, 100.0, x + 60, 130.0))]


def test_a_wall_clock_stepped_back_leaves_speeds_alone(tmp_path):
    cam = CameraPipeline(CameraConfig(id="cam-clock", url="sim://scene?seed=1"))
    detector, image = Mover(), np.zeros((360, 640, 3), np.uint8)
    store = FileImageStore(tmp_path, 60)
    speeds = []
    for i, wall in enumerate((1000.0, 1000.5, 1001.0, 999.5, 1000.0)):  # NTP steps the clock back 1.5 s
        result = analyse(cam, Frame(image, wall, i, mono=50.0 + 0.5 * i), detector, store, Settings())
        speeds.append(result.objects[0].speed)
    assert speeds[2:] == pytest.approx([20.0, 20.0, 20.0], abs=0.5)


def test_a_calibration_clicked_on_another_resolution_is_refused_at_the_first_frame(caplog):
    """Points clicked on a 1920x1080 snapshot, used on a 640x360 stream: every ground position, speed
    and TTC was wrong, and nothing said so."""
    from models.cameras import CalibrationConfig

    big = [[0, 1080, 0, 0], [1920, 1080, 40, 0], [1920, 0, 40, 22.5], [0, 0, 0, 22.5], [480, 360, 10, 15]]
    small = [[0, 360, 0, 0], [640, 360, 40, 0], [640, 0, 40, 22.5], [0, 0, 0, 22.5], [160, 120, 10, 15]]
    frame = Frame(np.zeros((360, 640, 3), np.uint8), time.time(), 0)
    wrong = CameraPipeline(
        CameraConfig(id="cam-hd", url="sim://scene?seed=1", calibration=CalibrationConfig(points=big, anchor="centre"))
    )
    right = CameraPipeline(
        CameraConfig(
            id="cam-sd", url="sim://scene?seed=1", calibration=CalibrationConfig(points=small, anchor="centre")
        )
    )
    with caplog.at_level("ERROR", logger="roadwatch.producer"):
        for cam in (wrong, right):
            analyse(cam, frame, Storm(), RedisImageStore("redis://127.0.0.1:1/0", 60), Settings())
    assert wrong.ground is None and "camera cam-hd: calibration points [1, 2, 3] lie outside its 640x360" in caplog.text
    assert right.ground is not None and "cam-sd" not in caplog.text
