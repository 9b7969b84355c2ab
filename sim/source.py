"""The ``sim://`` frame source: the synthetic scene of :mod:`sim.scene` as a camera.

``sim://scene?seed=N&vehicles=R&pedestrians=R&width=W&height=H&start=S`` renders the scene at
wall-clock time since the source opened (``start`` seconds in, so a camera shows traffic at
once), at the moment a frame is asked for: a camera that never lags. The producer finds this
module through the ``roadwatch.sources`` entry point in ``pyproject.toml``, as it would find a
user's own source plugin; the product never imports the simulator.

Hard conditions (:class:`sim.scene.Conditions`) are query keys too: ``scale=0.7``,
``shake=3``, ``light=dusk|clouds|night``, ``poles=3``, ``stops=0.5`` (share of vehicles that stop
and start again), ``kerb=2-8`` (pedestrians wait that many seconds before crossing), ``follow=1`` (vehicles keep
their lane's order and queue behind a stopped one).
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import numpy as np

from models.sources import FrameSource
from sim.scene import Conditions, Scene
from streams.errors import ConfigError


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def scene_from_url(url: str) -> Scene:
    """The synthetic scene a ``sim://scene?...`` URL names (benchmarks replay it in scene time)."""
    q = _query(url)
    light = q.get("light", "steady")
    if light not in ("steady", "dusk", "clouds", "night"):
        raise ValueError(f"light={light!r}: steady, dusk, clouds or night")
    kerb = q.get("kerb")
    low, _, high = (kerb or "").partition("-")
    conditions = Conditions(
        scale=float(q.get("scale", 1.0)),
        shake_px=float(q.get("shake", 0.0)),
        light=light,  # type: ignore[arg-type]
        poles=int(q.get("poles", 0)),
        stop_and_go=float(q.get("stops", 0.0)),
        kerb_wait_s=(float(low), float(high or low)) if kerb else None,
        follow=q.get("follow", "0") in ("1", "true", "yes"),
    )
    return Scene(
        seed=int(q.get("seed", 1)),
        vehicle_rate=float(q.get("vehicles", 0.5)),
        pedestrian_rate=float(q.get("pedestrians", 0.25)),
        width=int(q.get("width", 640)),
        height=int(q.get("height", 360)),
        conditions=conditions,
    )


class SimulatedSource(FrameSource):
    """The synthetic scene, at wall-clock time since the source opened."""

    on_demand = True

    def __init__(self, scene: Scene, *, start_s: float = 0.0) -> None:
        self.scene = scene
        self.opened = time.time() - start_s

    def read(self) -> np.ndarray | None:
        frame, _ = self.scene.render(time.time() - self.opened)
        return frame


def open_sim_source(url: str) -> SimulatedSource:
    """The entry point the producer calls for a ``sim://`` camera URL."""
    try:
        return SimulatedSource(scene_from_url(url), start_s=float(_query(url).get("start", 20)))
    except ValueError as exc:
        raise ConfigError(f"bad simulated camera URL {url!r}: {exc}") from exc
