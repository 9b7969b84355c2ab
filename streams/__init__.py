"""roadwatch's stream layer: the Faust app, settings, records, topics and tables.

``faust -A streams worker`` finds the app here as ``streams.app``. It is resolved on first
access, so that importing the record contract (``streams.records``, ``streams.topic_names``,
``streams.settings``, ``streams.errors``) reads no settings and builds no Faust app.

``streams.app`` is also the name of the module that builds the app, and Python binds a
submodule onto its package once the submodule is imported, which would hand Faust the module
instead of the App. The package's module class therefore keeps the attribute the App.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _StreamsPackage(types.ModuleType):
    @property
    def app(self) -> Any:
        return importlib.import_module("streams.app").app

    @app.setter
    def app(self, value: Any) -> None:
        """The import system binds the submodule here; ``app`` stays the App it builds."""


sys.modules[__name__].__class__ = _StreamsPackage
