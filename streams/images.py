"""Claim-check storage for crops: small JPEGs travel inline, larger ones by reference.

The producer stores a crop above ``inline_image_limit`` bytes and puts only its URI on Kafka;
the scheduler and the web views resolve it. ``file://DIR`` suits one machine (development),
``redis://`` several (the crop lives under a key with a TTL). A reference that no longer
resolves raises :class:`ImageMissing`, which the scheduler turns into a failed result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import struct
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np
import redis

from streams.errors import BadImage, ConfigError, ImageMissing
from streams.records import ImageRef

NAME_CHARS = set("0123456789abcdef")
#: A crop is a part of one frame: a few hundred KB at most even from a 4K camera.
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_SIDE = 4096


class ImageStore(ABC):
    """Where crops too big to travel inline are kept."""

    @abstractmethod
    def put(self, jpeg: bytes) -> str:
        """Store a crop and return its URI."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """Return the crop stored under ``uri`` or raise ImageMissing."""

    @staticmethod
    def name_for(jpeg: bytes) -> str:
        return hashlib.sha1(jpeg, usedforsecurity=False).hexdigest()


class FileImageStore(ImageStore):
    """Crops as files, in one folder per minute of writing; a folder older than the TTL goes whole.

    A node at 100 cameras and 2 fps writes some 12,000 files a minute: with the default TTL of ten
    minutes, one flat folder held over 100,000, and its sweep, every 30 s in every producer process,
    listed and stat-ed each of them (1.6 s of CPU for 120,000 files here). By minute, the sweep
    removes whole folders by their name. The URI names the folder: ``file://<minute>-<sha1>``
    (one path segment, so the web view's ``/images/file/<name>`` still routes); ``file://<sha1>``,
    written before, still resolves.
    """

    #: seconds of writing per folder
    BUCKET_S = 60

    def __init__(self, folder: Path, ttl_s: float) -> None:
        self.folder = folder
        self.ttl_s = ttl_s
        self._last_sweep = 0.0
        self._made: str | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, jpeg: bytes) -> str:
        name = self.name_for(jpeg)
        bucket = str(int(time.time() // self.BUCKET_S))
        folder = self.folder / bucket
        if self._made != bucket:
            folder.mkdir(exist_ok=True)
            self._made = bucket
        path = folder / f"{name}.jpg"
        # a temporary name of this thread's own: analysis threads may store the same crop at once,
        # and with one name per crop one thread's rename took the file from under another's
        tmp = folder / f"{name}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            tmp.write_bytes(jpeg)
        except FileNotFoundError:  # another process swept the folder (a clock step back): make it again
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        self._maybe_sweep()
        return f"file://{bucket}-{name}"

    def get(self, uri: str) -> bytes:
        ref = uri.removeprefix("file://")
        bucket, dash, name = ref.rpartition("-")
        if not name or set(name) - NAME_CHARS or (dash and not bucket.isdigit()):
            raise ImageMissing(f"malformed image reference {uri[:80]!r}")
        path = self.folder / bucket / f"{name}.jpg" if bucket else self.folder / f"{name}.jpg"
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageMissing(f"image {uri} not found (expired or never stored)") from exc
        except OSError as exc:  # a name too long, a folder unreadable: the crop cannot be had
            raise ImageMissing(f"image {uri[:80]!r} unreadable: {type(exc).__name__}") from exc

    def _maybe_sweep(self) -> None:
        now = time.time()
        if now - self._last_sweep < 30:
            return
        self._last_sweep = now
        for entry in self.folder.iterdir():
            if entry.name.isdigit():
                # a folder's last write was at the end of its minute
                if (int(entry.name) + 1) * self.BUCKET_S < now - self.ttl_s:
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.suffix in (".jpg", ".tmp"):  # flat files of before, or of a writer that died
                try:
                    if now - entry.stat().st_mtime > self.ttl_s:
                        entry.unlink()
                except FileNotFoundError:
                    pass


class RedisImageStore(ImageStore):
    """Crops in Redis with a TTL, for producers and workers on several machines."""

    def __init__(self, url: str, ttl_s: int) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2.0)
        self.ttl_s = ttl_s

    def put(self, jpeg: bytes) -> str:
        name = self.name_for(jpeg)
        self.client.set(f"roadwatch:img:{name}", jpeg, ex=self.ttl_s)
        return f"redis://{name}"

    def get(self, uri: str) -> bytes:
        name = uri.removeprefix("redis://")
        try:
            data = self.client.get(f"roadwatch:img:{name}")
        except (redis.RedisError, OSError) as exc:  # the task fails as one without its crop, not as an internal error
            raise ImageMissing(f"image store unreachable ({type(exc).__name__})") from exc
        if not isinstance(data, bytes):
            raise ImageMissing(f"image {uri} not found in Redis (expired or never stored)")
        return data


def open_store(spec: str, *, redis_url: str, ttl_s: int) -> ImageStore:
    """Build the store named by the ``image_store`` setting."""
    if spec.startswith("file://"):
        return FileImageStore(Path(spec.removeprefix("file://")), ttl_s)
    if spec.startswith("redis://"):
        return RedisImageStore(redis_url, ttl_s)
    raise ConfigError(f"image_store must be file://DIR or redis://, got {spec!r}")


def make_ref(
    jpeg: bytes, width: int, height: int, store: ImageStore, inline_limit: int, region: list[float] | None = None
) -> ImageRef:
    """Inline the crop when small, otherwise store it and carry the reference."""
    if len(jpeg) <= inline_limit:
        return ImageRef(
            data_b64=base64.b64encode(jpeg).decode(), width=width, height=height, size=len(jpeg), region=region
        )
    return ImageRef(uri=store.put(jpeg), width=width, height=height, size=len(jpeg), region=region)


def image_url(ref: ImageRef) -> str:
    """Where a browser gets the crop: a data URL when inline, the worker's /images/ view otherwise."""
    if ref.data_b64:
        return "data:image/jpeg;base64," + ref.data_b64
    return "/images/" + ref.uri.replace("://", "/", 1) if ref.uri else ""


def resolve(ref: ImageRef, store: ImageStore) -> bytes:
    """The JPEG bytes of a reference, inline or stored, checked to be a usable image."""
    if ref.data_b64:
        try:
            data = base64.b64decode(ref.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadImage(f"inline image is not valid base64: {exc}") from exc
    elif ref.uri:
        data = store.get(ref.uri)
    else:
        raise ImageMissing("image reference has neither inline data nor a URI")
    check_image(data)
    return data


#: JPEG start-of-frame markers (baseline, progressive, lossless, ...): they carry the image size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) as a JPEG's frame header or a PNG's IHDR claims it, without decoding pixels."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadImage("PNG without an IHDR header")
        return struct.unpack(">II", data[16:24])  # type: ignore[return-value]
    if not data.startswith(b"\xff\xd8"):
        raise BadImage(f"not a JPEG or PNG (starts with {data[:8]!r})")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise BadImage(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header, or a bad length
            break
        i += 2 + length
    raise BadImage("JPEG without a frame header")


def check_image(data: bytes) -> None:
    """Refuse what would waste a VLM call or a decoder: huge, not an image, corrupt.

    The header's claimed size is checked first, before a decoder allocates anything for it (a
    631-byte JPEG can claim 20000x20000 pixels, 1.2 GB decoded); then the image is decoded:
    crops are small, and a truncated or garbled JPEG is only found by decoding it. Callers on
    the event loop run this in a thread.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"image of {len(data)} bytes exceeds {MAX_IMAGE_BYTES}")
    width, height = header_size(data)
    if width <= 0 or height <= 0 or max(width, height) > MAX_IMAGE_SIDE:
        raise BadImage(f"image header claims {width}x{height}: over {MAX_IMAGE_SIDE} px a side or empty")
    # a JPEG is decoded at an eighth of its size, in grey: the decoder still reads every coefficient of the
    # entropy-coded data (a truncated stream fails as at full size; a garbled middle decodes, with a warning,
    # as it did) but skips most of the inverse DCT and all colour conversion: 30-45% of the CPU time of a full
    # decode of a 320x240 or 640x480 crop
    jpeg = data.startswith(b"\xff\xd8")
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if jpeg else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise BadImage(f"corrupt image ({len(data)} bytes do not decode)")
    if not jpeg and max(image.shape[:2]) > MAX_IMAGE_SIDE:
        raise BadImage(f"image of {image.shape[1]}x{image.shape[0]} exceeds {MAX_IMAGE_SIDE} px a side")
