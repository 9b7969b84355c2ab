"""The lanes a fixed camera has seen traffic take, learned from its tracks, for predicting where a vehicle goes.

Constant-velocity TTC extrapolates a vehicle straight along its current heading. From a camera
that heading lags in and after a turn, and a car leaving a bend is predicted across the
oncoming lane: in a SUMO grid most of the pairs a plain TTC flags are such phantom conflicts
between cars that each keep to their lane. A fixed camera sees the same lanes all day, so it
can learn them: the ground is cut in cells, and each cell keeps, per heading sector, the
circular mean of the headings of the vehicles that moved through it. A prediction then steers
a vehicle, step by step, towards the learned heading nearest its own at the place it has
reached (within ``MATCH_DEG``, at most ``MAX_YAW_RATE``), so a car coming out of a turn
straightens into its lane and one in a turn follows the arc others drove; where nothing has
been learned, it goes on at its own turn rate (CTRV).

This is the motion-pattern idea of the video-surveillance literature (trajectory prototypes
learned per scene), kept to its simplest vectorised form.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Heading sectors per cell.
SECTORS = 32
#: A learned heading steers a prediction only when within this of the predicted heading.
MATCH_DEG = 50.0
#: Vehicles slower than this (m/s) teach nothing (a queue's jitter is not a lane).
LEARN_MIN_SPEED = 2.0
#: A sector counts once this many passages went through it.
MIN_PASSAGES = 3
#: Steering is limited to this rate (rad/s), the tightest urban turn.
MAX_YAW_RATE = 0.8


class FlowMap:
    """Per-cell heading sectors over a bounded ground area ``(x0, y0, x1, y1)`` in metres."""

    def __init__(self, bounds: tuple[float, float, float, float], cell_m: float = 2.0) -> None:
        x0, y0, x1, y1 = bounds
        if not (x1 > x0 and y1 > y0 and cell_m > 0):
            raise ValueError(f"flow map bounds {bounds} must span an area, cell {cell_m} m")
        self.origin = np.array([x0, y0])
        self.cell_m = cell_m
        self.shape = (math.ceil((x1 - x0) / cell_m), math.ceil((y1 - y0) / cell_m))
        #: per cell and sector: passages, sum of cos, sum of sin
        self.sums = np.zeros((*self.shape, SECTORS, 3))

    def _cells(self, xy: FloatArray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        ij = np.floor((xy - self.origin) / self.cell_m).astype(np.intp)
        inside = (ij[..., 0] >= 0) & (ij[..., 0] < self.shape[0]) & (ij[..., 1] >= 0) & (ij[..., 1] < self.shape[1])
        return np.clip(ij[..., 0], 0, self.shape[0] - 1), np.clip(ij[..., 1], 0, self.shape[1] - 1), inside

    def learn(self, xy: FloatArray, heading: FloatArray, speed: FloatArray) -> None:
        """Add one frame's vehicles: positions (N, 2), headings (N,), speeds (N,)."""
        moving = speed >= LEARN_MIN_SPEED
        if not moving.any():
            return
        i, j, inside = self._cells(xy[moving])
        head = heading[moving][inside]
        i, j = i[inside], j[inside]
        # sectors centred on the compass directions, so a lane running due east is not split in two
        sector = np.floor(((head + math.pi / SECTORS) % math.tau) / math.tau * SECTORS).astype(np.intp) % SECTORS
        np.add.at(self.sums, (i, j, sector), np.stack([np.ones_like(head), np.cos(head), np.sin(head)], axis=1))

    def lane_heading(self, x: float, y: float) -> float | None:
        """The heading most vehicles had at ``(x, y)`` (radians), or None where too few passed."""
        i, j, inside = self._cells(np.array([x, y], dtype=np.float64))
        if not bool(inside):
            return None
        cell = self.sums[int(i), int(j)]
        best = int(cell[:, 0].argmax())
        if cell[best, 0] < MIN_PASSAGES:
            return None
        return math.atan2(float(cell[best, 2]), float(cell[best, 1]))

    @property
    def learned_cells(self) -> int:
        return int(((self.sums[..., 0] >= MIN_PASSAGES).any(axis=2)).sum())

    def predict(
        self,
        xy: FloatArray,
        heading: FloatArray,
        speed: FloatArray,
        yaw_rate: FloatArray,
        steps: FloatArray,
        turn_left: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """Positions (N, K, 2) and headings (N, K) at the times ``steps`` (evenly spaced from 0), steered by the lanes;
        where none is learned, on at the road user's own turn rate for at most ``turn_left`` (rad) of turning.

        Steered at twice the step and interpolated between: the steering is smooth, the overlap test
        downstream wants the fine step.
        """
        n, k = len(xy), len(steps)
        coarse = steps[::2] if k > 2 and k % 2 == 1 else steps  # coarse only when it ends on the last step
        flat = self.sums.reshape(-1, SECTORS, 3)
        pos = np.empty((n, len(coarse), 2))
        head = np.empty((n, len(coarse)))
        p, h = xy.astype(np.float64).copy(), heading.astype(np.float64).copy()
        pos[:, 0], head[:, 0] = p, h
        match = math.radians(MATCH_DEG)
        rows = np.arange(n)
        ny = self.shape[1]
        free_left = np.full(n, np.inf) if turn_left is None else turn_left.astype(np.float64).copy()
        for step in range(1, len(coarse)):
            dt = float(coarse[step] - coarse[step - 1])
            ij = np.floor((p - self.origin) / self.cell_m).astype(np.intp)
            inside = (ij[:, 0] >= 0) & (ij[:, 0] < self.shape[0]) & (ij[:, 1] >= 0) & (ij[:, 1] < ny)
            cell = np.where(inside, ij[:, 0] * ny + ij[:, 1], 0)
            sums = flat[cell]  # (N, SECTORS, 3): only the cells reached are looked at
            lane = np.arctan2(sums[..., 2], sums[..., 1])
            diff = np.abs(np.remainder(lane - h[:, None] + math.pi, math.tau) - math.pi)
            diff[(sums[..., 0] < MIN_PASSAGES) | ~inside[:, None]] = np.inf
            best = diff.argmin(axis=1)
            steer = diff[rows, best] <= match
            wanted = np.remainder(lane[rows, best] - h + math.pi, math.tau) - math.pi
            limit = MAX_YAW_RATE * dt
            free = np.sign(yaw_rate) * np.minimum(np.abs(yaw_rate) * dt, free_left)
            turn = np.where(steer, np.minimum(np.maximum(wanted, -limit), limit), free)
            # a turn the lanes steered the same way counts as well; steering back against it does not
            free_left = np.maximum(free_left - np.maximum(turn * np.sign(yaw_rate), 0.0), 0.0)
            mid = h + turn / 2
            dist = speed * dt
            p = p + np.stack([np.cos(mid) * dist, np.sin(mid) * dist], axis=1)
            h = h + turn
            pos[:, step], head[:, step] = p, h
        if len(coarse) == k:
            return pos, head
        fine_pos = np.empty((n, k, 2))
        fine_head = np.empty((n, k))
        fine_pos[:, ::2], fine_head[:, ::2] = pos, head
        odd = np.arange(1, k, 2)
        below, above = odd // 2, np.minimum(odd // 2 + 1, len(coarse) - 1)
        fine_pos[:, odd] = (pos[:, below] + pos[:, above]) / 2
        fine_head[:, odd] = (head[:, below] + head[:, above]) / 2
        return fine_pos, fine_head
