"""roadwatch's stream layer: the Faust app, settings, records, topics and tables.

``faust -A streams worker`` finds the app here: ``streams.app`` is resolved on first access, so
that importing the record contract (``streams.records``, ``streams.topic_names``,
``streams.settings``, ``streams.errors``) reads no settings and builds no Faust app.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module 'streams' has no attribute {name!r}")
    instance = importlib.import_module("streams.app").app
    globals()["app"] = instance  # the App, not its module, as Faust's ``-A streams`` expects
    return instance
