"""Named sets of simulated cameras, as ``sim://`` URLs (see :mod:`models.sources`).

* ``demo``: the four cameras of ``deploy/cameras.sim.yaml``, a crowded crossing (20 pedestrians
  a minute through four lanes of traffic) that keeps the dashboard busy: about 60 labelled risk
  events per camera-minute, more than a 30-calls-a-minute budget can look at.
* ``labelled``: the scenario the VLM economy is judged on: four busy streets (18-30 vehicles a
  minute) with pedestrians crossing at a city-centre rate (3-5 a minute), some pausing on the
  kerb, some stepping out in front of traffic; every risk event is labelled by
  :meth:`sim.scene.Scene.risk_events`.
* ``harder``: what a real street does to a motion detector, one condition a camera (issue 16):
  small and distant road users on a 1280x720 frame (pedestrians down to 8x21 px), camera
  shake, dusk, clouds, lamp posts in front of the road, vehicles that stop and start again
  with pedestrians waiting at the kerb, night with headlights. Vehicles keep their lane's order (none drives through
  another; they queue behind a stopped one). Ground truth says which road users stood still and
  how much of each an occluder hides.
"""

from __future__ import annotations

from pathlib import Path

from models.cameras import load_cameras

ROOT = Path(__file__).resolve().parents[1]

LABELLED: dict[str, str] = {
    "lab-1": "sim://scene?seed=101&vehicles=0.4&pedestrians=0.06",
    "lab-2": "sim://scene?seed=202&vehicles=0.5&pedestrians=0.08",
    "lab-3": "sim://scene?seed=303&vehicles=0.3&pedestrians=0.07",
    "lab-4": "sim://scene?seed=404&vehicles=0.45&pedestrians=0.05",
}

HARDER: dict[str, str] = {
    "distant": "sim://scene?seed=11&vehicles=0.45&pedestrians=0.2&width=1280&height=720&scale=0.7&follow=1",
    "shake": "sim://scene?seed=12&vehicles=0.4&pedestrians=0.15&shake=3&follow=1",
    "dusk": "sim://scene?seed=13&vehicles=0.4&pedestrians=0.15&light=dusk&follow=1",
    "clouds": "sim://scene?seed=14&vehicles=0.4&pedestrians=0.15&light=clouds&follow=1",
    "occluded": "sim://scene?seed=15&vehicles=0.4&pedestrians=0.15&poles=3&follow=1",
    "stop_and_go": "sim://scene?seed=16&vehicles=0.4&pedestrians=0.15&stops=0.5&kerb=2-8&follow=1",
    "night": "sim://scene?seed=17&vehicles=0.4&pedestrians=0.15&light=night&follow=1",
}


def scenario(name: str) -> dict[str, str]:
    """Camera id -> sim URL for a named scenario."""
    if name == "labelled":
        return dict(LABELLED)
    if name == "harder":
        return dict(HARDER)
    if name == "demo":
        return {c.id: c.url for c in load_cameras(ROOT / "deploy" / "cameras.sim.yaml")}
    raise ValueError(f"unknown scenario {name!r}: demo, labelled or harder")
