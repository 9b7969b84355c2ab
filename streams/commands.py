"""Extra commands on the worker's command line: ``python -m streams check-config``."""

from __future__ import annotations

from faust.cli import AppCommand

from streams.app import app, settings
from streams.settings import redact_url, redact_webhook


@app.command()
async def check_config(self: AppCommand) -> None:
    """Validate the settings and keys, and print them (keys as aliases only)."""
    keys = settings.api_keys()
    for name, value in settings.model_dump().items():
        if name in ("vlm_keys", "web_token"):
            value = "<set>" if value else "<unset>"
        elif name == "alert_webhook_url" and value:
            value = redact_webhook(str(value))
        elif isinstance(value, str) and "://" in value:
            value = redact_url(value)  # credentials in a Redis, webhook or broker URL
        self.say(f"{name:24s} {value}")
    self.say(f"{'keys':24s} {', '.join(k.alias for k in keys) or 'NONE: the scheduler cannot call the VLM'}")
