"""JSON over HTTP to roadwatch's own loopback services (worker views, the simulated VLM's admin).

Worker views need the web token: it is taken from ``ROADWATCH_WEB_TOKEN`` when set, the same
variable the workers read, so a test, benchmark or ``make status`` that starts workers with a
token can talk to them.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    token = os.environ.get("ROADWATCH_WEB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def get_text(url: str, timeout: float = 5.0) -> str:
    request = urllib.request.Request(url, headers=_headers())  # noqa: S310 - URLs built by the caller
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
        return str(resp.read().decode(errors="replace"))


def get_json(url: str, timeout: float = 5.0) -> Any:
    return json.loads(get_text(url, timeout))


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    request = urllib.request.Request(  # noqa: S310 - URLs built by the caller
        url, data=json.dumps(body).encode(), method="POST", headers=_headers({"Content-Type": "application/json"})
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
        return json.loads(resp.read())
