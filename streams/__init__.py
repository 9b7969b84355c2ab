"""roadwatch's stream layer: the Faust app, settings, records, topics, tables and web views.

``faust -A streams worker`` finds the app here (Faust looks for ``streams.app``).
"""

from streams.app import app

__all__ = ["app"]
