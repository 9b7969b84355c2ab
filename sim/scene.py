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
import math
import random
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from models.geometry import box_gap, intersections

VEHICLE_CLASSES = ("car", "car", "car", "truck", "bus")
#: The scene is drawn top-down at this scale: a 62-80 px car is 3.9-5 m, a 40-47 px lane 2.5-2.9 m,
#: vehicles drive 3.4-7.5 m/s and pedestrians walk 1.4-2.4 m/s. Its cameras' exact calibration.
PX_PER_M = 16.0
#: No actor stays on screen longer than this (slowest crossing plus a pause or a queue).
MAX_LIFETIME_S = 60.0


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
    #: The time (since ``t0``) the actor stops, and for how long: a pedestrian waiting at the
    #: kerb, a vehicle held at a light that then starts again.
    pause_at: float = -1.0
    pause_s: float = 0.0

    def position(self, t: float) -> tuple[float, float] | None:
        dt = t - self.t0
        if dt < 0:
            return None
        if self.pause_at >= 0 and dt > self.pause_at:
            dt = max(self.pause_at, dt - self.pause_s)
        return self.x0 + self.vx * dt, self.y0 + self.vy * dt

    def travelled(self, t: float) -> float:
        """Pixels driven since it entered, at ``t``."""
        pos = self.position(t)
        return 0.0 if pos is None else math.hypot(pos[0] - self.x0, pos[1] - self.y0)

    def still_for(self, t: float) -> float:
        """Seconds the actor has stood still at ``t`` (0 while it moves)."""
        dt = t - self.t0
        if self.pause_at >= 0 and self.pause_at < dt < self.pause_at + self.pause_s:
            return dt - self.pause_at
        return 0.0


@dataclass(frozen=True)
class TruthBox:
    """Ground truth for one visible actor in one frame."""

    actor_id: int
    cls: str
    bbox: tuple[float, float, float, float]
    moving: bool
    #: seconds it has stood still (a motion detector cannot be asked to see one still for long)
    still_s: float = 0.0
    #: share of its box in view: not behind a pole or a nearer road user (overlaps summed, so
    #: a box hidden twice over counts as hidden)
    visible: float = 1.0


#: At night the street gets this share of the light it was drawn with; headlights add
#: HEADLIGHT_GAIN over HEADLIGHT_REACH vehicle lengths ahead (a lit road at about twice its
#: night brightness).
NIGHT_GAIN, HEADLIGHT_GAIN, HEADLIGHT_REACH = 0.35, 0.45, 1.0
#: A cloud's shadow takes this share of the light, and its soft edge is this share of the
#: frame's extent across it.
CLOUD_SHADE, CLOUD_EDGE = 0.33, 0.15
Light = Literal["steady", "dusk", "clouds", "night"]


@dataclass(frozen=True)
class Conditions:
    """What makes a scene hard for a detector; the defaults are the plain scene.

    * ``scale``: road users drawn (and moving) at this size, for small and distant ones;
    * ``shake_px``: the camera on a pole in the wind: every frame shifted by up to this much;
    * ``light``: ``dusk`` dims the street to half over a minute; ``clouds``: every 15-30 s a cloud's
      shadow darkens the street by a third for 4-10 s, its soft edge sweeping across the frame in
      1.5-4 s from any side (a shadow at 10-25 m/s over a view some 40 m wide): while it
      crosses, part of the frame is in shade and part in sun; ``night`` keeps it at a third and every vehicle
      throws its headlights on the road ahead of it (a lit patch as long as the vehicle, moving
      with it: no road user, but foreground to a background model);
    * ``poles``: static occluders (lamp posts, sign poles) in front of the road;
    * ``stop_and_go``: share of vehicles that stop mid-frame for 3-12 s and drive on;
    * ``kerb_wait_s``: pedestrians wait at the kerb this long (min, max) before crossing;
    * ``follow``: vehicles keep to their lane's order as on a real road: none is faster than the
      one ahead, none enters before there is room, and one that reaches a stopped vehicle
      queues behind it and leaves a second after it (the plain scene lets them drive through
      each other, which no detector can be asked to separate).
    """

    scale: float = 1.0
    shake_px: float = 0.0
    light: Light = "steady"
    poles: int = 0
    stop_and_go: float = 0.0
    kerb_wait_s: tuple[float, float] | None = None
    follow: bool = False


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
        conditions: Conditions | None = None,
    ) -> None:
        self.seed, self.width, self.height, self.noise = seed, width, height, noise
        self.conditions = conditions or Conditions()
        rng = random.Random(seed)
        # the conditions draw from their own generator: a plain scene stays the scene it always was
        self._hard_rng = random.Random(seed * 7919 + 17)
        self.background = self._background(rng)
        self.lanes = [int(height * f) for f in (0.42, 0.53, 0.66, 0.78)]
        self.crosswalk_x = int(width * rng.uniform(0.35, 0.65))
        self.actors: list[Actor] = []
        self._spawn(rng, duration_s, vehicle_rate, pedestrian_rate)
        self.poles = self._poles()
        self.clouds = self._clouds(duration_s) if self.conditions.light == "clouds" else []
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
        ahead: dict[int, Actor] = {}  # the last vehicle that entered each lane
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
            color = (rng.randint(30, 230), rng.randint(30, 230), rng.randint(30, 230))
            k = self.conditions.scale
            w, h, speed = round(w * k), round(h * k), speed * k
            x0 = float(-w if speed > 0 else self.width)
            y0 = self.lanes[lane] - h / 2
            pause_at, pause_s = -1.0, 0.0
            stops = self._hard_rng.random() < self.conditions.stop_and_go
            enter = t
            if self.conditions.follow and lane in ahead:
                enter, speed, pause_at, pause_s = self._queue(ahead[lane], t, speed)
            if stops and pause_at < 0:
                # stops somewhere in the middle third of the frame, then drives on
                stop_x = self.width * self._hard_rng.uniform(0.33, 0.66)
                pause_at = abs(stop_x - (x0 + w / 2)) / abs(speed)
                pause_s = self._hard_rng.uniform(3.0, 12.0)
            actor = Actor(next_id, cls, enter, x0, y0, speed, 0.0, w, h, color, pause_at, pause_s)
            self.actors.append(actor)
            ahead[lane] = actor
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
            if self.conditions.kerb_wait_s is not None:
                pause = self._hard_rng.uniform(*self.conditions.kerb_wait_s)
            k = self.conditions.scale
            w, h, vy = max(4, round(w * k)), round(h * k), vy * k
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

    def _queue(self, lead: Actor, t: float, speed: float) -> tuple[float, float, float, float]:
        """When a vehicle behind ``lead`` enters, how fast it drives, and where and how long it queues."""
        gap, reaction = 10.0 * self.conditions.scale, 1.0
        v = math.copysign(min(abs(speed), abs(lead.vx)), speed)
        room = lead.w + gap
        enter = t
        while lead.travelled(enter) < room and enter < t + 120.0:
            enter += 0.1  # no room yet at the edge of the frame
        if lead.pause_at < 0:
            return enter, v, -1.0, 0.0
        lead_stop = abs(lead.vx) * lead.pause_at
        lead_leaves = lead.t0 + lead.pause_at + lead.pause_s
        stop_at = lead_stop - room  # where its front halts, behind the lead's back
        arrives = enter + stop_at / abs(v)
        if stop_at <= 0 or arrives >= lead_leaves + reaction:
            return enter, v, -1.0, 0.0
        return enter, v, stop_at / abs(v), lead_leaves + reaction - arrives

    def _poles(self) -> list[tuple[int, int, int, int]]:
        """Static occluders: posts 10-14 px wide standing on the near sidewalk, over the road."""
        boxes = []
        for i in range(self.conditions.poles):
            x = int(self.width * (i + 0.5) / self.conditions.poles + self._hard_rng.uniform(-40, 40))
            w = self._hard_rng.randint(10, 14)
            boxes.append((x, int(self.height * 0.2), x + w, int(self.height * 0.9)))
        return boxes

    def _clouds(self, duration_s: float) -> list[tuple[float, float, float, float]]:
        """(start, length, heading, sweep) of each cloud passing over the sun: its shadow's edge
        enters the frame at ``start`` moving along ``heading`` (radians) and takes ``sweep``
        seconds to cross it; each point stays in shade for ``length`` seconds."""
        out, t = [], self._hard_rng.uniform(5, 15)
        while t < duration_s:
            length, sweep = self._hard_rng.uniform(4, 10), self._hard_rng.uniform(1.5, 4.0)
            out.append((t, length, self._hard_rng.uniform(0, 2 * math.pi), sweep))
            t += length + sweep + self._hard_rng.uniform(10, 20)
        return out

    def gain(self, t: float) -> float | np.ndarray:
        """The light on the street at ``t`` (1 = the background as drawn): one figure for the
        whole frame, or (clouds, while a shadow's edge crosses) one per pixel."""
        light = self.conditions.light
        if light == "dusk":
            return 1.0 - 0.5 * min(1.0, max(0.0, (t - 20.0) / 60.0))
        if light == "night":
            return NIGHT_GAIN
        if light == "clouds":
            i = bisect.bisect_right(self.clouds, (t, math.inf)) - 1
            if i >= 0:
                return self._shade(t, *self.clouds[i])
        return 1.0

    def _shade(self, t: float, start: float, length: float, heading: float, sweep: float) -> float | np.ndarray:
        """The light under one cloud's shadow: a band moving along ``heading`` with soft edges
        (penumbra CLOUD_EDGE of the frame's extent along it), every point in it for ``length`` s."""
        if t >= start + length + sweep:
            return 1.0
        cos, sin = math.cos(heading), math.sin(heading)
        corners = [x * cos + y * sin for x in (0, self.width) for y in (0, self.height)]
        low, extent = min(corners), max(corners) - min(corners)
        edge = CLOUD_EDGE * extent
        speed = (extent + edge) / sweep
        front = low - edge / 2 + speed * (t - start)  # the shadow's leading edge, along heading
        back = front - speed * length
        if front - edge / 2 >= low + extent and back + edge / 2 <= low:
            return 1.0 - CLOUD_SHADE  # the whole frame in shade
        p = (
            np.arange(self.width, dtype=np.float32)[None, :] * cos
            + np.arange(self.height, dtype=np.float32)[:, None] * sin
        )
        cover = np.clip((front - p) / edge + 0.5, 0.0, 1.0) * np.clip((p - back) / edge + 0.5, 0.0, 1.0)
        shade: np.ndarray = 1.0 - CLOUD_SHADE * cover
        return shade

    def shake(self, t: float) -> tuple[float, float]:
        """The camera's offset at ``t``: a sway of the pole plus a jolt every frame."""
        amp = self.conditions.shake_px
        if not amp:
            return 0.0, 0.0
        jolt = np.random.default_rng((self.seed, round(t * 1000))).uniform(-0.5, 0.5, 2)
        return (
            float(amp * (0.5 * math.sin(2.1 * t) + jolt[0])),
            float(amp * (0.5 * math.sin(1.3 * t + 1.0) + jolt[1])),
        )

    def truth(self, t: float) -> list[TruthBox]:
        """Visible actors at time ``t`` with their boxes in the frame (clipped to it, shake included)."""
        boxes = []
        dx, dy = self.shake(t)
        first = bisect.bisect_left(self._starts, t - MAX_LIFETIME_S)
        last = bisect.bisect_right(self._starts, t)
        for a in self.actors[first:last]:
            pos = a.position(t)
            if pos is None:
                continue
            x, y = pos[0] + dx, pos[1] + dy
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(self.width - 1.0, x + a.w), min(self.height - 1.0, y + a.h)
            if x2 - x1 < a.w * 0.5 or y2 - y1 < a.h * 0.5:
                continue  # mostly off screen
            still = a.still_for(t)
            boxes.append(TruthBox(a.actor_id, a.cls, (x1, y1, x2, y2), still == 0.0, round(still, 3)))
        return self._visibility(boxes, dx, dy)

    def _visibility(self, boxes: list[TruthBox], dx: float, dy: float) -> list[TruthBox]:
        """Each box's share in view: nearer road users (drawn later) and poles hide what is behind."""
        order = sorted(range(len(boxes)), key=lambda i: boxes[i].bbox[3])
        rank = np.empty(len(boxes), np.int64)
        rank[order] = np.arange(len(boxes))
        poles = [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for x1, y1, x2, y2 in self.poles]
        own = np.array([box.bbox for box in boxes], np.float64).reshape(-1, 4)
        nearer = rank[None, :] > rank[:, None]  # [i, j]: j is drawn over i
        hidden = (intersections(own, own) * nearer).sum(axis=1) + intersections(
            own, np.array(poles, np.float64).reshape(-1, 4)
        ).sum(axis=1)
        out = []
        for box, covered in zip(boxes, hidden.tolist(), strict=True):
            b = box.bbox
            area = (b[2] - b[0]) * (b[3] - b[1])
            visible = round(max(0.0, 1.0 - covered / area), 3) if area > 0 else 0.0
            out.append(replace(box, visible=visible) if covered else box)
        return out

    def render(self, t: float) -> tuple[np.ndarray, list[TruthBox]]:
        """The frame at time ``t`` (BGR) and its ground truth."""
        frame = self.background.copy()
        dx, dy = self.shake(t)
        boxes = self.truth(t)
        for box in sorted(boxes, key=lambda b: b.bbox[3]):  # far first
            actor = self._by_id[box.actor_id]
            x, y = actor.position(t) or (0.0, 0.0)  # visible, so it has a position
            self._draw(frame, actor, (x, y, x + actor.w, y + actor.h))
        for x1, y1, x2, y2 in self.poles:
            cv2.rectangle(frame, (x1, y1), (x2, y2), (55, 60, 62), -1)
            cv2.rectangle(frame, (x1 - 4, y1), (x2 + 4, y1 + 10), (40, 45, 48), -1)
        if dx or dy:
            shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
            frame = cv2.warpAffine(frame, shift, (self.width, self.height), borderMode=cv2.BORDER_REPLICATE)
        gain = self.gain(t)
        lit = self._headlights(boxes) if self.conditions.light == "night" else None
        if isinstance(gain, np.ndarray):
            gain = gain[..., None]
        if self.noise or isinstance(gain, np.ndarray) or gain != 1.0:
            out = frame.astype(np.float32) * (gain if lit is None else (gain + lit)[..., None])
            if self.noise:
                out += self._noise_rng.normal(0, self.noise, (*frame.shape[:2], 1))
            frame = np.clip(out, 0, 255).astype(np.uint8)
        return frame, boxes

    def _headlights(self, boxes: list[TruthBox]) -> np.ndarray:
        """Extra light on the street from each vehicle's headlights: a soft patch ahead of it.

        Drawn in frame coordinates from the truth boxes (shake included), brightest nearest the
        vehicle; a pedestrian crossing in it is lit too.
        """
        light = np.zeros((self.height, self.width), np.float32)
        for box in boxes:
            if box.cls == "person":
                continue
            actor = self._by_id[box.actor_id]
            x1, y1, x2, y2 = box.bbox
            length, h = x2 - x1, y2 - y1
            ahead = 1 if actor.vx >= 0 else -1
            front = x2 if ahead > 0 else x1
            far = front + ahead * HEADLIGHT_REACH * length
            pts = np.array(
                [
                    (front, y1 + 0.45 * h),
                    (far, y1 + 0.15 * h),
                    (far, y2 + 0.15 * h),
                    (front, y2 - 0.05 * h),
                ],
                np.int32,
            )
            cv2.fillConvexPoly(light, pts, HEADLIGHT_GAIN)
        return cv2.GaussianBlur(light, (0, 0), 4.0)

    @staticmethod
    def _draw(frame: np.ndarray, actor: Actor, bbox: tuple[float, float, float, float]) -> None:
        # the label's box ends where the actor does: cv2 draws both end pixels, so the last drawn
        # pixel is one before it (drawn to x2 itself, every actor was a pixel wider and taller
        # than its label, and a perfect box on an 8x21 pedestrian scored an IoU of 0.85)
        x1, y1, x2, y2 = (round(v) for v in bbox)
        x2, y2 = x2 - 1, y2 - 1
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
