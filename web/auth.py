"""The web token: every view but ``/health`` needs it (Bearer or ``?token=``).

The token is ``ROADWATCH_WEB_TOKEN``, or, when that is unset, one made at the first start and
kept in ``DATA_DIR/web-token`` (mode 0600) so restarts keep it. It is read (and the file written)
when the worker starts, never when a module is imported. Until then every request is refused.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from streams.errors import ConfigError
from streams.settings import Settings, secret_problem

logger = logging.getLogger(__name__)

#: Paths open without a token: liveness probes must not need a secret.
OPEN_PATHS = frozenset({"/health", "/health/"})


class WebAuth:
    """The worker's token check; refuses everything until :meth:`load` ran."""

    def __init__(self) -> None:
        self.required = True
        self.token: str | None = None

    async def load(self, settings: Settings) -> None:
        """Read (or make once per data dir) the token the settings call for."""
        self.required = settings.web_auth
        if not self.required:
            self.token = None
            return
        if settings.web_token is not None:
            token = settings.web_token.get_secret_value()
            problem = secret_problem(token)
            if problem:  # Settings refuses it too; an empty token would equal "no credentials"
                raise ConfigError(f"ROADWATCH_WEB_TOKEN {problem}")
            self.token = token
            return
        path = Path(settings.data_dir) / "web-token"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        logger.warning("web token required; it is in %s (set ROADWATCH_WEB_TOKEN to choose one)", path)
        self.token = path.read_text().strip()

    def allows(self, request: Any) -> bool:
        """True for an open path, when auth is off, or when the request carries the token."""
        if request.path in OPEN_PATHS or not self.required:
            return True
        if self.token is None:
            return False
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = bearer or request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())
