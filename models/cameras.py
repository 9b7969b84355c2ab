"""The cameras file: which cameras a producer reads, validated strictly.

```yaml
cameras:
  - id: cam-1
    url: rtsp://10.0.0.5/stream1      # or a file path, or sim://scene?seed=1
    fps: 2                            # analysis frames per second
    enabled: true
    zones: {crossing: [[100, 200], [300, 200], [300, 340], [100, 340]]}   # optional
    calibration:                      # optional: the road plane, for speeds, TTC and PET in metres
      points: [[u, v, x, y], ...]     # 4+ image pixels with their ground position in metres
      anchor: bottom                  # where a box touches the ground: bottom (oblique view) or centre (top-down)
```
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from models.calibration import MAX_ERROR_M, Calibration, CalibrationError, fit
from streams.errors import ConfigError
from streams.records import CAMERA_ID as ID

logger = logging.getLogger(__name__)


class CalibrationConfig(BaseModel):
    """A camera's ground plane; fitted when the file is read, so a bad one stops the producer at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points: list[tuple[float, float, float, float]] = Field(
        min_length=4, description="[u, v, x, y]: image pixel and ground position in metres."
    )
    anchor: Literal["bottom", "centre"] = Field(
        default="bottom",
        description="Where a box meets the ground: bottom centre for an oblique camera, centre for a top-down one.",
    )
    max_error_m: float = Field(default=MAX_ERROR_M, gt=0, description="Refuse a fit with a point off by more.")
    _fitted: Calibration | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fit(self) -> CalibrationConfig:
        try:
            self._fitted = fit(self.points, self.max_error_m)
        except CalibrationError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def fitted(self) -> Calibration:
        if self._fitted is None:  # only a model built without validation (model_construct) lacks it
            self._fitted = fit(self.points, self.max_error_m)
        return self._fitted


class CameraConfig(BaseModel):
    """One camera."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Camera id: the Kafka key of all its records.")
    url: str = Field(description="rtsp://..., a video file path, or sim://scene?seed=N.")
    fps: float = Field(default=2.0, gt=0, le=30, description="Analysis frames per second.")
    enabled: bool = True
    zones: dict[str, list[tuple[int, int]]] = Field(default_factory=dict, description="Named polygons.")
    calibration: CalibrationConfig | None = Field(default=None, description="Image-to-ground homography.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ID.match(value):
            raise ValueError(f"camera id {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _unchecked_calibration(self) -> CameraConfig:
        if self.calibration is not None and not self.calibration.fitted().checked:
            logger.warning(
                "camera %s: its calibration points fit exactly (4 points, or more with some a pixel apart), so a "
                "mistyped one cannot be caught: add a point away from the others, or check the grid of "
                "python -m models.calibration by eye",
                self.id,
            )
        return self


class CamerasFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cameras: list[CameraConfig]


def load_cameras(path: Path) -> list[CameraConfig]:
    """Read and validate; errors name the file, the camera and the field."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"cameras file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(data, dict):  # top-level x-* keys hold YAML anchors shared by cameras, as in compose files
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        parsed = CamerasFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid cameras file:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}{_camera_named(data, err['loc'])}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
    ids = [c.id for c in parsed.cameras]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate camera ids {dupes}")
    return [c for c in parsed.cameras if c.enabled]


def _camera_named(data: object, loc: tuple[int | str, ...]) -> str:
    """ " (camera cam-1)" for an error inside the file's second camera: its position alone is hard to find."""
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int) and isinstance(data, dict):
        cameras = data.get("cameras")
        if isinstance(cameras, list) and 0 <= loc[1] < len(cameras) and isinstance(cameras[loc[1]], dict):
            camera_id = cameras[loc[1]].get("id")
            if isinstance(camera_id, str):
                return f" (camera {camera_id[:64]})"
    return ""
