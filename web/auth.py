"""The web token: every view but ``/health`` needs it (Bearer or ``?token=``).

The token is ``ROADWATCH_WEB_TOKEN``, or, when that is unset, one made at the first start and
kept in ``DATA_DIR/web-token`` (mode 0600) so restarts keep it. It is read (and the file written)
when the worker starts, never when a module is imported. Until then every request is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
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


def make_token_file(path: Path) -> None:
    """Write a new token to ``path`` (mode 0600) atomically: written whole under another name, then
    linked into place, so no reader (another worker sharing the data dir) ever sees it half-written,
    and when two workers race, the first link wins and both use its token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another worker made it first
    finally:
        draft.unlink(missing_ok=True)


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
            make_token_file(path)
        logger.warning("web token required; it is in %s (set ROADWATCH_WEB_TOKEN to choose one)", path)
        token = path.read_text().strip()
        problem = secret_problem(token)
        if problem:  # an empty token would equal "no credentials"
            raise ConfigError(f"the web token in {path} {problem}: delete the file to have a new one made")
        self.token = token

    def cross_site(self, request: Any) -> str | None:
        """Why a request with auth off may come from another site's page (None: it does not).

        With auth off (the local stack) nothing else would stop a page the developer visits from
        POSTing to ``/keys/key-1/disable`` (a form POST needs no CORS preflight) or reading ``/ws``;
        nor, by DNS rebinding (its own name pointed at 127.0.0.1), from reading every view. So the
        Host must be ``localhost`` or an IP address, and a browser's Origin, when sent, that Host.
        With auth on, such a page lacks the token.
        """
        if self.required:
            return None
        host = request.host or ""
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
        if name != "localhost" and not _is_ip(name):
            return f"Host {host!r} is not localhost or an IP address (auth is off: set a web token to serve a name)"
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1].rstrip("/") != host:
            return "a request from another site's page (Origin differs from Host) while auth is off"
        return None

    def allows(self, request: Any) -> bool:
        """True for an open path, when auth is off, or when the request carries the token."""
        return request.path in OPEN_PATHS or self.carries_token(request)

    def carries_token(self, request: Any) -> bool:
        """True when auth is off or the request carries the token (on an open path too)."""
        if not self.required:
            return True
        if self.token is None:
            return False
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = bearer or request.query.get("token", "")
        # a header aiohttp could not read as UTF-8 arrives with surrogates: its own bytes, compared
        # (a plain encode raised, a 500 and a traceback for anyone without the token)
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode())


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
