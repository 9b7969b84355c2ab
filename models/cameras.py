"""The cameras file: which cameras a producer reads, validated strictly.

```yaml
cameras:
  - id: cam-1
    url: rtsp://10.0.0.5/stream1      # or a file path, or sim://scene?seed=1
    fps: 2                            # analysis frames per second
    enabled: true
    zones: {crossing: [[100, 200], [300, 200], [300, 340], [100, 340]]}   # optional
```
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.errors import ConfigError
from streams.records import CAMERA_ID as ID


class CameraConfig(BaseModel):
    """One camera."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Camera id: the Kafka key of all its records.")
    url: str = Field(description="rtsp://..., a video file path, or sim://scene?seed=N.")
    fps: float = Field(default=2.0, gt=0, le=30, description="Analysis frames per second.")
    enabled: bool = True
    zones: dict[str, list[tuple[int, int]]] = Field(default_factory=dict, description="Named polygons.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ID.match(value):
            raise ValueError(f"camera id {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
        return value


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
    try:
        parsed = CamerasFile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid cameras file:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
    ids = [c.id for c in parsed.cameras]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate camera ids {dupes}")
    return [c for c in parsed.cameras if c.enabled]
