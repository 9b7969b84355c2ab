"""Frame sources and the per-camera grabber that keeps only the newest frame.

* any other ``scheme://``: a plugin registered under the entry-point group
  ``roadwatch.sources`` (the simulator registers ``sim://``, :mod:`sim.source`); the product
  never imports the simulator, it finds it the way it would find a user's own source.
* ``rtsp://...``: OpenCV's FFMPEG backend over TCP with open and read timeouts (OpenCV's
  defaults block ~90 s on a hung server); a failed read releases the capture and reopens it
  with backoff, since a failed ``VideoCapture`` never recovers by itself.
* a file path: decoded in a loop at the file's own frame rate.

A :class:`Grabber` thread per camera reads continuously and keeps just the latest frame, so
detection never works on stale frames and one bad camera never stalls the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points

import cv2
import numpy as np

from streams import metrics
from streams.errors import ConfigError
from streams.settings import redact_url

logger = logging.getLogger(__name__)

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;500000|probesize;100000")


@dataclass(frozen=True)
class Frame:
    """One captured frame."""

    image: np.ndarray
    captured_at: float  # epoch seconds
    seq: int
    #: time.monotonic() at capture, when the frame came from a clock (a wall clock stepped back
    #: made a tracked car's speed 6,000 px/s)
    mono: float | None = None

    @property
    def motion_time(self) -> float:
        """The time speeds and tracks are measured on: monotonic when known."""
        return self.mono if self.mono is not None else self.captured_at


class FrameSource(ABC):
    """Something that yields frames; ``read`` returns None on failure."""

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds."""

    #: Seconds between frames when reading as fast as the source allows (0: no pacing).
    interval_s: float = 0.0
    #: True for a source that makes a frame when asked (a renderer): it needs no grabber thread.
    on_demand: bool = False


class VideoSource(FrameSource):
    """An RTSP stream or a video file through OpenCV; files loop."""

    def __init__(self, url: str, *, open_timeout_ms: int = 5000, read_timeout_ms: int = 5000) -> None:
        self.url = url
        self.is_file = not url.lower().startswith(("rtsp://", "rtsps://", "http://", "https://"))
        if self.is_file and not os.path.isfile(url):
            raise ConfigError(f"video file {redact_url(url)!r} not found")
        self.open_timeout_ms, self.read_timeout_ms = open_timeout_ms, read_timeout_ms
        self.cap: cv2.VideoCapture | None = None

    def _open(self) -> cv2.VideoCapture | None:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.read_timeout_ms,
        ]
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        if self.is_file:
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            self.interval_s = 1.0 / fps if fps > 0 else 0.04
        return cap

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            self.cap = self._open()
            if self.cap is None:
                return None
        ok, frame = self.cap.read()
        if ok and frame is not None:
            return frame
        if self.is_file:  # loop
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if ok:
                return frame
        self.close()
        return None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


#: Entry-point group of frame-source plugins: name = URL scheme, value = ``callable(url) -> FrameSource``.
SOURCE_PLUGINS = "roadwatch.sources"
#: Schemes OpenCV opens itself.
VIDEO_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")


def open_source(url: str) -> FrameSource:
    """The source for a camera URL: a video stream or file, or a plugin's source for its scheme."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""  # schemes are case-insensitive
    if not scheme or scheme in VIDEO_SCHEMES:
        return VideoSource(url[len("file://") :] if scheme == "file" else url)
    plugins = {ep.name: ep for ep in entry_points(group=SOURCE_PLUGINS)}
    if scheme not in plugins:
        known = ", ".join(sorted([*VIDEO_SCHEMES, *plugins]))
        raise ConfigError(f"no frame source for {scheme}:// in {redact_url(url)!r} (known: {known})")
    source = plugins[scheme].load()(url)
    if not isinstance(source, FrameSource):
        raise ConfigError(f"the {scheme}:// plugin returned {type(source).__name__}, not a FrameSource")
    return source


class Grabber(threading.Thread):
    """Reads one camera continuously, keeps the newest frame, reconnects with backoff."""

    def __init__(self, camera_id: str, source: FrameSource, *, max_backoff_s: float = 10.0) -> None:
        super().__init__(name=f"grab-{camera_id}", daemon=True)
        self.camera_id, self.source, self.max_backoff_s = camera_id, source, max_backoff_s
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        # not ``_stop``: threading.Thread has a method of that name, which join() and is_alive() call
        self._halt = threading.Event()
        self.seq = 0
        self.reconnects = 0
        self.up = False

    def latest(self) -> Frame | None:
        """The newest frame not yet taken, or None (each frame is taken once)."""
        with self._lock:
            frame, self._latest = self._latest, None
            return frame

    def run(self) -> None:
        try:
            self._grab()
        finally:
            # released here, by the thread that reads: releasing from another thread while a read
            # is under way crashed the process (OpenCV frees the capture under the reader)
            self.source.close()

    def _read(self) -> np.ndarray | None:
        try:
            return self.source.read()
        except Exception as exc:  # a plugin's or OpenCV's error is a failed read: reconnect, not a dead camera
            logger.warning("camera %s: read raised %s", self.camera_id, type(exc).__name__, exc_info=True)
            with contextlib.suppress(Exception):
                self.source.close()
            return None

    def _grab(self) -> None:
        backoff = 0.5
        while not self._halt.is_set():
            image = self._read()
            if image is None:
                if self._halt.is_set():
                    break
                if self.up:
                    logger.warning("camera %s: read failed, reconnecting", self.camera_id)
                elif self.reconnects == 0 or self.reconnects % 60 == 0:  # never up: say so now and then
                    logger.warning(
                        "camera %s: no frames from %s (%d tries)",
                        self.camera_id,
                        redact_url(self.source.url) if isinstance(self.source, VideoSource) else "its source",
                        self.reconnects + 1,
                    )
                self.up = False
                metrics.camera_up.labels(camera_id=self.camera_id).set(0)
                self.reconnects += 1
                metrics.camera_reconnects_total.labels(camera_id=self.camera_id).inc()
                self._halt.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            if not self.up:
                logger.info("camera %s: receiving frames", self.camera_id)
            self.up, backoff = True, 0.5
            metrics.camera_up.labels(camera_id=self.camera_id).set(1)
            metrics.frames_grabbed_total.labels(camera_id=self.camera_id).inc()
            with self._lock:
                if self._latest is not None:
                    metrics.frames_dropped_total.labels(camera_id=self.camera_id, reason="superseded").inc()
                self._latest = Frame(image, time.time(), self.seq, time.monotonic())
                self.seq += 1
            if self.source.interval_s:
                self._halt.wait(self.source.interval_s)

    def stop(self) -> None:
        """Ask the thread to stop: it releases the source itself (one never started is released here)."""
        self._halt.set()
        if not self.is_alive():
            self.source.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the thread to end (a read blocked in the network may outlast it)."""
        if self.is_alive():
            self.join(max(0.0, timeout_s))
        return not self.is_alive()


class OnDemandGrabber:
    """For simulated cameras: render a frame when asked, no thread needed."""

    def __init__(self, camera_id: str, source: FrameSource) -> None:
        self.camera_id, self.source, self.seq, self.up = camera_id, source, 0, True

    def latest(self) -> Frame | None:
        image = self.source.read()
        if image is None:
            return None
        metrics.frames_grabbed_total.labels(camera_id=self.camera_id).inc()
        self.seq += 1
        return Frame(image, time.time(), self.seq - 1, time.monotonic())

    def start(self) -> None:
        metrics.camera_up.labels(camera_id=self.camera_id).set(1)

    def stop(self) -> None:
        self.source.close()

    def wait(self, timeout_s: float) -> bool:
        return True
