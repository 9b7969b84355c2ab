"""SUMO as an independent oracle for the conflict measures: scenarios, trajectories and SUMO's own conflicts.

SUMO (Eclipse SUMO, from the ``eclipse-sumo`` wheel) simulates microscopic traffic and, with
its SSM device, logs every conflict it sees between two vehicles with the minimum TTC, the
maximum DRAC and the PET, computed on the lanes the vehicles will really drive. The same run's
floating-car data (FCD) holds each vehicle's position, heading and speed at every step. Feeding
those trajectories to :mod:`models.ssm` and comparing with SUMO's log checks roadwatch's engine
against code no one here wrote.

A :class:`VirtualCamera` (a pinhole over an intersection) turns the trajectories into what a
camera would see: pixels with noise, which the calibration then brings back to the ground.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: SUMO's default passenger car (randomTrips' DEFAULT_VEHTYPE): 5 m by 1.8 m.
CAR_LENGTH_M = 5.0
CAR_WIDTH_M = 1.8
#: SUMO's SSM encounter types that are car following (FOLLOWING, _FOLLOWER, _LEADER).
FOLLOWING_TYPES = frozenset({1, 2, 3})


class SumoMissing(RuntimeError):
    """The eclipse-sumo wheel is not installed (``pip install eclipse-sumo``)."""


@dataclass(frozen=True)
class Scenario:
    """A SUMO network and its demand."""

    name: str
    #: netgenerate arguments
    net: tuple[str, ...]
    #: seconds between two departures (randomTrips' period): smaller is denser
    period_s: float
    duration_s: float
    seed: int = 1
    #: SUMO options beyond the SSM device's and the outputs' (the drivers' model)
    sumo_args: tuple[str, ...] = ()
    #: the ground point the benchmark's virtual camera looks at (a junction of the network), and the
    #: direction it looks in (radians from the x axis)
    camera_target: tuple[float, float] = (150.0, 150.0)
    camera_yaw: float = math.pi / 2


SCENARIOS = {
    # a 3x3 grid of signalised intersections, two lanes each way: queues at red, crossings at green
    "grid_tls": Scenario(
        "grid_tls",
        ("--grid", "--grid.number", "3", "--grid.length", "150", "--default.lanenumber", "2", "--tls.guess", "true"),
        period_s=0.8,
        duration_s=600.0,
    ),
    # the same grid with priority junctions: the crossing conflicts are not resolved by a light
    "grid_priority": Scenario(
        "grid_priority",
        (
            "--grid",
            "--grid.number",
            "3",
            "--grid.length",
            "150",
            "--default.lanenumber",
            "1",
            "--default-junction-type",
            "priority",
        ),
        period_s=2.5,
        duration_s=600.0,
    ),
    # following traffic: a corridor of four signalised junctions 300 m apart, two lanes each way, side
    # streets, drivers who act once a second (SUMO's action step, its model of a reaction time; the default
    # driver acts every 0.1 s step and almost never closes up to a following TTC under 1.5 s): queues, late
    # braking, cut-ins
    "corridor_reaction": Scenario(
        "corridor_reaction",
        (
            "--grid",
            "--grid.x-number",
            "4",
            "--grid.y-number",
            "1",
            "--grid.x-length",
            "300",
            "--grid.attach-length",
            "150",
            "--default.lanenumber",
            "2",
            "--tls.guess",
            "true",
        ),
        period_s=1.0,
        duration_s=600.0,
        sumo_args=("--default.action-step-length", "1.0"),
        # from 30 m west of the corridor's second junction, looking east along it: the junction, the
        # westbound approach and the eastbound exit, to about 100 m past it
        camera_target=(450.0, 150.0),
        camera_yaw=0.0,
    ),
}


@dataclass(frozen=True)
class SumoConflict:
    """One conflict from SUMO's SSM log (both vehicles' orders are logged; ``pair`` is unordered)."""

    ego: str
    foe: str
    begin: float
    end: float
    min_ttc: float
    min_ttc_time: float
    min_ttc_type: int
    max_drac: float
    pet: float
    pet_time: float
    #: (time, TTC) at each of SUMO's steps with a TTC, for sampling it as a camera would (empty when the run
    #: logged no trajectories)
    ttc_series: tuple[tuple[float, float], ...] = ()

    @property
    def pair(self) -> tuple[str, str]:
        a, b = sorted((self.ego, self.foe))
        return a, b


@dataclass
class Trajectories:
    """FCD as arrays, one row per vehicle and step: the footprint's centre, not SUMO's front bumper."""

    t: FloatArray
    vehicle: npt.NDArray[np.str_]
    x: FloatArray
    y: FloatArray
    #: radians, x axis = 0, counter-clockwise (SUMO's angle is a compass bearing in degrees)
    heading: FloatArray
    speed: FloatArray
    lane: npt.NDArray[np.str_]

    def frames(self, fps: float) -> Iterator[tuple[float, npt.NDArray[np.intp]]]:
        """(time, row indices) at ``fps`` frames a second."""
        order = np.argsort(self.t, kind="stable")
        ts = self.t[order]
        step = 1.0 / fps
        start = math.ceil(ts[0] / step) * step if len(ts) else 0.0
        for when in np.arange(start, ts[-1] + 1e-9 if len(ts) else 0.0, step):
            lo, hi = np.searchsorted(ts, [when - 1e-6, when + 1e-6])
            if hi > lo:
                yield float(when), order[lo:hi]


def binary(name: str) -> str:
    """Path of a SUMO binary from the wheel, or :class:`SumoMissing`."""
    try:
        import sumo  # the wheel's package: SUMO_HOME and its bin/
    except ImportError as exc:
        raise SumoMissing("eclipse-sumo is not installed: pip install eclipse-sumo (or make install)") from exc
    path = Path(sumo.SUMO_HOME) / "bin" / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise SumoMissing(f"{name} not found in {path.parent}")
        return found
    return str(path)


def run(scenario: Scenario, workdir: Path, *, step_s: float = 0.1) -> tuple[Path, Path]:
    """Run ``scenario`` in ``workdir``; the paths of its FCD and SSM logs."""
    import sumo

    workdir.mkdir(parents=True, exist_ok=True)
    net, trips, routes = workdir / "net.net.xml", workdir / "trips.xml", workdir / "routes.rou.xml"
    fcd, ssm = workdir / "fcd.xml", workdir / "ssm.xml"
    collisions = workdir / "collisions.xml"
    _call([binary("netgenerate"), *scenario.net, "--seed", str(scenario.seed), "-o", str(net)])
    random_trips = Path(sumo.SUMO_HOME) / "tools" / "randomTrips.py"
    _call(
        [
            sys.executable,
            str(random_trips),
            "-n",
            str(net),
            "-e",
            str(scenario.duration_s),
            "-p",
            str(scenario.period_s),
            "--seed",
            str(scenario.seed),
            "--fringe-factor",
            "10",
            "--min-distance",
            "200",
            "-o",
            str(trips),
            "-r",
            str(routes),
            "--validate",
        ]
    )
    _call(
        [
            binary("sumo"),
            "-n",
            str(net),
            "-r",
            str(routes),
            "--end",
            str(scenario.duration_s),
            "--step-length",
            str(step_s),
            "--seed",
            str(scenario.seed),
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--device.ssm.probability",
            "1",
            "--device.ssm.measures",
            "TTC DRAC PET",
            "--device.ssm.thresholds",
            "3.0 3.0 2.0",
            "--device.ssm.range",
            "50",
            "--device.ssm.file",
            str(ssm),
            # each conflict's TTC at every step, not only its minimum: what a camera sampling at its own rate
            # could have seen of it (bench.ssm's sampling ceiling)
            "--device.ssm.trajectories",
            "true",
            # SUMO's own collision check, junctions included, only reporting: the SSM device's "collision"
            # type (footprints overlapping inside a junction) is compared against it
            "--collision.check-junctions",
            "true",
            "--collision.action",
            "warn",
            "--collision-output",
            str(collisions),
            "--fcd-output",
            str(fcd),
            "--fcd-output.attributes",
            "x,y,angle,speed,lane",
            # a lane change over 3 s, as a driver makes one: SUMO's default moves a car 3.2 m sideways in one
            # 0.1 s step, which no camera sees on a road and which the tracker turns into a turn rate that
            # sweeps the predicted path across the next lanes. It changes SUMO's traffic too: the run before
            # is kept in bench/results/ssm.json (sumo_instant_lane_changes)
            "--lanechange.duration",
            "3",
            *scenario.sumo_args,
        ]
    )
    return fcd, ssm


def count_collisions(workdir: Path) -> int:
    """Collisions SUMO's own check reported in a :func:`run`."""
    path = workdir / "collisions.xml"
    return sum(1 for _ in ET.parse(path).getroot().iter("collision")) if path.exists() else 0  # noqa: S314


def _call(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 - SUMO's binaries, our arguments
    if done.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def read_fcd(path: Path, length: float = CAR_LENGTH_M) -> Trajectories:
    """SUMO's FCD as :class:`Trajectories`, each position moved from the front bumper to the centre."""
    t: list[float] = []
    veh: list[str] = []
    x: list[float] = []
    y: list[float] = []
    ang: list[float] = []
    spd: list[float] = []
    lane: list[str] = []
    now = 0.0
    for event, elem in ET.iterparse(path, events=("start", "end")):  # noqa: S314 - SUMO's own output
        if event == "start" and elem.tag == "timestep":
            now = float(elem.get("time", "0"))
        elif event == "end" and elem.tag == "vehicle":
            t.append(now)
            veh.append(elem.get("id", ""))
            x.append(float(elem.get("x", "nan")))
            y.append(float(elem.get("y", "nan")))
            ang.append(float(elem.get("angle", "0")))
            spd.append(float(elem.get("speed", "0")))
            lane.append(elem.get("lane", ""))
            elem.clear()
        elif event == "end" and elem.tag == "timestep":
            elem.clear()
    bearing = np.radians(np.array(ang))
    heading = np.pi / 2 - bearing
    xs, ys = np.array(x), np.array(y)
    return Trajectories(
        t=np.array(t),
        vehicle=np.array(veh),
        x=xs - np.cos(heading) * length / 2,
        y=ys - np.sin(heading) * length / 2,
        heading=heading,
        speed=np.array(spd),
        lane=np.array(lane),
    )


def read_ssm(path: Path) -> list[SumoConflict]:
    """SUMO's SSM log; a measure SUMO did not take is NaN. Read element by element: with trajectories the log
    of a ten-minute grid is some 80 MB."""

    def num(value: str | None) -> float:
        return float(value) if value not in (None, "NA", "") else math.nan

    out = []
    root: ET.Element | None = None
    for event, conflict in ET.iterparse(path, events=("start", "end")):  # noqa: S314 - SUMO's own output
        if root is None:
            root = conflict
        if event != "end" or conflict.tag != "conflict":
            continue
        series: tuple[tuple[float, float], ...] = ()
        times, values = conflict.find("timeSpan"), conflict.find("TTCSpan")
        if times is not None and values is not None:
            stamps, ttcs = (times.get("values") or "").split(), (values.get("values") or "").split()
            if len(stamps) == len(ttcs):  # a log cut short keeps its minimum, not a series
                series = tuple((float(t), float(v)) for t, v in zip(stamps, ttcs, strict=True) if v != "NA")
        ttc = conflict.find("minTTC")
        drac = conflict.find("maxDRAC")
        pet = conflict.find("PET")
        ttc_type = ttc.get("type") if ttc is not None else None
        out.append(
            SumoConflict(
                ego=conflict.get("ego", ""),
                foe=conflict.get("foe", ""),
                begin=num(conflict.get("begin")),
                end=num(conflict.get("end")),
                min_ttc=num(ttc.get("value") if ttc is not None else None),
                min_ttc_time=num(ttc.get("time") if ttc is not None else None),
                min_ttc_type=int(ttc_type) if ttc_type not in (None, "NA") else -1,
                max_drac=num(drac.get("value") if drac is not None else None),
                pet=num(pet.get("value") if pet is not None else None),
                pet_time=num(pet.get("time") if pet is not None else None),
                ttc_series=series,
            )
        )
        root.clear()  # the conflicts read so far: the log's memory stays one conflict's
    return out


@dataclass(frozen=True)
class VirtualCamera:
    """A pinhole camera over the ground plane: ``height_m`` up, ``back_m`` behind ``target``, looking at it.

    Its ground homography is ``K [r1 r2 t]``: exact, so the only error a test adds is the noise
    it chooses and the calibration fitted from clicked (rounded) points.
    """

    target: tuple[float, float]
    height_m: float = 15.0
    back_m: float = 30.0
    #: compass direction the camera looks in, radians from the x axis
    yaw: float = math.pi / 2
    focal_px: float = 1000.0
    width: int = 1280
    height: int = 720

    def projection(self) -> FloatArray:
        """The 3x4 camera matrix K [R | t]: world (x, y, z, 1) -> image (u, v, 1)."""
        tx, ty = self.target
        cam = np.array([tx - self.back_m * math.cos(self.yaw), ty - self.back_m * math.sin(self.yaw), self.height_m])
        forward = np.array([tx, ty, 0.0]) - cam
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])  # world -> camera
        trans = -rot @ cam
        k = np.array([[self.focal_px, 0, self.width / 2], [0, self.focal_px, self.height / 2], [0, 0, 1]])
        out: FloatArray = k @ np.c_[rot, trans]
        return out

    def box(self, x: float, y: float, heading: float, length: float, width: float, height: float) -> list[float] | None:
        """The image box ``[x1, y1, x2, y2]`` of a road user's 3D box, or None when not wholly in front and in view."""
        c, s = math.cos(heading), math.sin(heading)
        corners = [
            (x + c * dl - s * dw, y + s * dl + c * dw, z)
            for dl in (-length / 2, length / 2)
            for dw in (-width / 2, width / 2)
            for z in (0.0, height)
        ]
        homog = np.c_[np.array(corners), np.ones(8)] @ self.projection().T
        if (homog[:, 2] <= 0).any():
            return None
        pix = homog[:, :2] / homog[:, 2:3]
        x1, y1 = pix.min(axis=0)
        x2, y2 = pix.max(axis=0)
        if x1 < 0 or y1 < 0 or x2 >= self.width or y2 >= self.height:
            return None
        return [float(x1), float(y1), float(x2), float(y2)]

    def homography(self) -> FloatArray:
        """Ground (x, y, 1) -> image (u, v, 1)."""
        p = self.projection()
        h: FloatArray = p[:, [0, 1, 3]]
        out: FloatArray = h / abs(float(h[2, 2]))
        return out

    def project(self, ground: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Pixels of ground points and whether each is in front of the camera and inside the image."""
        h = self.homography()
        homog = np.c_[ground, np.ones(len(ground))] @ h.T
        w = homog[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pix = homog[:, :2] / w[:, None]
        inside = (w > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < self.width) & (pix[:, 1] >= 0) & (pix[:, 1] < self.height)
        return pix, inside

    def clicked_points(self, spacing_m: float = 10.0) -> list[list[float]]:
        """A 3x3 grid of ground points around the target with their pixels rounded, as a person would click them."""
        tx, ty = self.target
        pts = np.array([(tx + i * spacing_m, ty + j * spacing_m) for i in (-1, 0, 1) for j in (-1, 0, 1)])
        pix, inside = self.project(pts)
        return [[round(u), round(v), x, y] for (u, v), (x, y), ok in zip(pix, pts, inside, strict=True) if ok]
