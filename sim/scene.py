"""Synthetic traffic video with ground truth: the simulated cameras.

A fixed camera looks at a road with two lanes each way and a crosswalk. Vehicles drive along
the lanes, pedestrians cross at the crosswalk and sometimes step out in front of a vehicle.
Frames are rendered for any time ``t`` (seconds since the scene started), deterministic for a
seed, with sensor noise and texture so a real detector has real work to do. Every frame comes
with its ground truth: each actor's class and box, and whether a pedestrian is within reach of
a moving vehicle (a labelled *risk event*, for measuring what the VLM budget catches).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import cv2
import numpy as np

from models.geometry import box_gap

VEHICLE_CLASSES = ("car", "car", "car", "truck", "bus")
#: The scene is drawn top-down at this scale: a 62-80 px car is 3.9-5 m, a 40-47 px lane 2.5-2.9 m,
#: vehicles drive 3.4-7.5 m/s and pedestrians walk 1.4-2.4 m/s. Its cameras' exact calibration.
PX_PER_M = 16.0
#: No actor stays on screen longer than this (slowest pedestrian crossing plus a pause).
MAX_LIFETIME_S = 40.0


@dataclass(frozen=True)
class Actor:
    """One road user's whole trajectory."""

    actor_id: int
    cls: str
    t0: float
    x0: float
    y0: float
    vx: float
    vy: float
    w: int
    h: int
    color: tuple[int, int, int]
    #: For pedestrians: the time they pause on the kerb, and for how long.
    pause_at: float = -1.0
    pause_s: float = 0.0

    def position(self, t: float) -> tuple[float, float] | None:
        dt = t - self.t0
        if dt < 0:
            return None
        if self.pause_at >= 0 and dt > self.pause_at:
            dt = max(self.pause_at, dt - self.pause_s)
        return self.x0 + self.vx * dt, self.y0 + self.vy * dt


@dataclass(frozen=True)
class TruthBox:
    """Ground truth for one visible actor in one frame."""

    actor_id: int
    cls: str
    bbox: tuple[float, float, float, float]
    moving: bool


class Scene:
    """A deterministic street scene; ``render(t)`` gives the frame and its ground truth."""

    def __init__(
        self,
        seed: int = 1,
        width: int = 640,
        height: int = 360,
        *,
        duration_s: float = 3600.0,
        vehicle_rate: float = 0.35,
        pedestrian_rate: float = 0.12,
        noise: float = 3.0,
    ) -> None:
        self.seed, self.width, self.height, self.noise = seed, width, height, noise
        rng = random.Random(seed)
        self.background = self._background(rng)
        self.lanes = [int(height * f) for f in (0.42, 0.53, 0.66, 0.78)]
        self.crosswalk_x = int(width * rng.uniform(0.35, 0.65))
        self.actors: list[Actor] = []
        self._spawn(rng, duration_s, vehicle_rate, pedestrian_rate)
        self.actors.sort(key=lambda a: a.t0)
        self._starts = [a.t0 for a in self.actors]
        self._by_id = {a.actor_id: a for a in self.actors}
        self._noise_rng = np.random.default_rng(seed)

    def calibration_points(self) -> list[list[float]]:
        """The frame's corners with their ground position (x east, y north, metres; origin bottom left)."""
        w, h = self.width, self.height
        return [[0, h, 0, 0], [w, h, w / PX_PER_M, 0], [w, 0, w / PX_PER_M, h / PX_PER_M], [0, 0, 0, h / PX_PER_M]]

    def _background(self, rng: random.Random) -> np.ndarray:
        h, w = self.height, self.width
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (70, 110, 90)  # verge
        road_top, road_bottom = int(h * 0.36), int(h * 0.86)
        img[road_top:road_bottom] = (88, 88, 88)
        img[int(h * 0.30) : road_top] = (150, 150, 155)  # far sidewalk
        img[road_bottom : int(h * 0.93)] = (150, 150, 155)  # near sidewalk
        texture = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 6, (h, w, 1))
        img = np.clip(img.astype(np.float32) + texture, 0, 255).astype(np.uint8)
        mid = (road_top + road_bottom) // 2
        for x in range(0, w, 40):
            cv2.line(img, (x, mid), (x + 20, mid), (220, 220, 220), 2)
        for y in (int(h * 0.475), int(h * 0.72)):
            for x in range(0, w, 30):
                cv2.line(img, (x, y), (x + 12, y), (200, 200, 200), 1)
        for x in range(0, w, 90):  # buildings behind the far sidewalk
            top = rng.randint(5, int(h * 0.18))
            shade = rng.randint(90, 170)
            cv2.rectangle(img, (x, top), (x + 80, int(h * 0.30)), (shade, shade - 10, shade - 20), -1)
        return img

    def _spawn(self, rng: random.Random, duration_s: float, vehicle_rate: float, pedestrian_rate: float) -> None:
        next_id = 1
        t = 0.0
        while vehicle_rate > 0 and t < duration_s:
            t += rng.expovariate(vehicle_rate)
            lane = rng.randrange(4)
            cls = rng.choice(VEHICLE_CLASSES)
            w, h = {
                "car": (rng.randint(62, 80), rng.randint(30, 36)),
                "truck": (rng.randint(95, 120), 42),
                "bus": (rng.randint(130, 150), 46),
            }[cls]
            speed = rng.uniform(55, 120) * (1 if lane >= 2 else -1)
            x0 = float(-w if speed > 0 else self.width)
            y0 = self.lanes[lane] - h / 2
            color = (rng.randint(30, 230), rng.randint(30, 230), rng.randint(30, 230))
            self.actors.append(Actor(next_id, cls, t, x0, y0, speed, 0.0, w, h, color))
            next_id += 1
        t = 1.0
        while pedestrian_rate > 0 and t < duration_s:
            t += rng.expovariate(pedestrian_rate)
            down = rng.random() < 0.5
            w, h = rng.randint(11, 15), rng.randint(30, 38)
            x0 = self.crosswalk_x + rng.uniform(-25, 25)
            y0 = self.height * 0.28 if down else self.height * 0.88
            vy = rng.uniform(22, 38) * (1 if down else -1)
            color = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            pause = rng.uniform(0.5, 2.5) if rng.random() < 0.4 else 0.0
            self.actors.append(
                Actor(
                    next_id,
                    "person",
                    t,
                    x0,
                    y0 - h,
                    0.0,
                    vy,
                    w,
                    h,
                    color,
                    pause_at=1.0 if pause else -1.0,
                    pause_s=pause,
                )
            )
            next_id += 1

    def truth(self, t: float) -> list[TruthBox]:
        """Visible actors at time ``t`` with their boxes (clipped to the frame)."""
        boxes = []
        first = bisect.bisect_left(self._starts, t - MAX_LIFETIME_S)
        last = bisect.bisect_right(self._starts, t)
        for a in self.actors[first:last]:
            pos = a.position(t)
            if pos is None:
                continue
            x, y = pos
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(self.width - 1.0, x + a.w), min(self.height - 1.0, y + a.h)
            if x2 - x1 < a.w * 0.5 or y2 - y1 < a.h * 0.5:
                continue  # mostly off screen
            moving = a.vx != 0 or (
                a.vy != 0 and not (a.pause_at >= 0 and a.pause_at < t - a.t0 < a.pause_at + a.pause_s)
            )
            boxes.append(TruthBox(a.actor_id, a.cls, (x1, y1, x2, y2), moving))
        return boxes

    def render(self, t: float) -> tuple[np.ndarray, list[TruthBox]]:
        """The frame at time ``t`` (BGR) and its ground truth."""
        frame = self.background.copy()
        boxes = self.truth(t)
        for box in sorted(boxes, key=lambda b: b.bbox[3]):  # far first
            actor = self._by_id[box.actor_id]
            self._draw(frame, actor, box.bbox)
        if self.noise:
            noise = self._noise_rng.normal(0, self.noise, (*frame.shape[:2], 1))
            frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return frame, boxes

    @staticmethod
    def _draw(frame: np.ndarray, actor: Actor, bbox: tuple[float, float, float, float]) -> None:
        x1, y1, x2, y2 = (round(v) for v in bbox)
        if actor.cls == "person":
            head = max(3, (x2 - x1) // 2)
            cv2.rectangle(frame, (x1, y1 + head * 2), (x2, y2), actor.color, -1)
            cv2.circle(frame, ((x1 + x2) // 2, y1 + head), head, (60, 90, 160), -1)
            return
        cv2.rectangle(frame, (x1, y1), (x2, y2), actor.color, -1)
        cv2.rectangle(frame, (x1, y1), (x2, y2), (20, 20, 20), 1)
        win = tuple(int(c * 0.45) for c in actor.color)
        cv2.rectangle(frame, (x1 + (x2 - x1) // 4, y1 + 4), (x2 - (x2 - x1) // 4, y1 + (y2 - y1) // 2), win, -1)

    def risk_events(self, t: float, reach: float = 1.0) -> list[tuple[int, int]]:
        """(pedestrian, vehicle) pairs within ``reach`` pedestrian heights, vehicle moving."""
        boxes = self.truth(t)
        people = [b for b in boxes if b.cls == "person"]
        vehicles = [b for b in boxes if b.cls != "person" and b.moving]
        events = []
        for p in people:
            ph = p.bbox[3] - p.bbox[1]
            for v in vehicles:
                if box_gap(p.bbox, v.bbox) <= reach * ph:
                    events.append((p.actor_id, v.actor_id))
        return events
