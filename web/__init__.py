"""The web layer: the worker's views, WebSocket and dashboard, above the agents."""
