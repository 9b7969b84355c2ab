"""A camera's last alerts in the ``alerts`` table: a small index per camera, and one record per alert.

The table held a camera's last 100 alerts as one value (each alert about 1.1 KB with its
detection), rewritten whole, through to RocksDB and the changelog, on every alert. Its cost grew
with the history: in the capacity soak (100 cameras, 49 alerts/s) it became 110 KB of JSON, a put
and a changelog record per alert, and by minute 10 the largest share of the worker's CPU (py-spy:
the JSON encoder alone 4% of samples at minute 1, 12% at minute 8), so the worker fell behind.

Now the camera's key holds an index, newest update first: ``{"task_id", "group_id", "at"}`` per
alert (``at``: when it was last raised, ms), at most ``keep``; each alert is its own record under
:func:`alert_key`. Raising or updating an alert writes that record and the index; an alert pushed
out of the last ``keep`` is deleted. What merging needs (the alerts on one group within the
cooldown) is read through the index, a record each.

A table written before this holds each camera's alerts whole under the camera's key: such an
entry (one with a ``level``) is its own record. Readers take it as is, and the camera's next
alert moves those out into their own records.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from streams.tables import camera_key
from streams.write_behind import put

#: Alerts kept a camera (``docs/ARCHITECTURE.md``: the last 100, per camera and overall).
ALERTS_KEPT = 100

#: Between the camera and the task id in an alert's key: camera ids are letters, digits, "_.-".
SEP = b"\x00"

Table = MutableMapping[bytes, Any]


def alert_key(camera_id: str, task_id: str) -> bytes:
    return camera_key(camera_id) + SEP + task_id.encode()


def _at(entry: dict[str, Any]) -> float:
    """When an index entry's alert was last raised (ms); an old whole alert says it in its own fields."""
    return float(entry.get("at", entry.get("last_raised_at", entry.get("raised_at", 0.0))))


def _whole(entry: Any) -> bool:
    """An entry of the old layout: the alert itself, not a reference to its record."""
    return isinstance(entry, dict) and "level" in entry


def alerts_in(value: Any) -> Iterator[dict[str, Any]]:
    """The alerts one table value holds, for a reader of every value (``/alerts/``): a record is one,
    an index none (its alerts are records of their own), an index of the old layout its whole ones."""
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list):
        yield from (entry for entry in value if _whole(entry))


class AlertBook:
    """The camera-keyed alert index and records over ``table`` (the worker's ``alerts_live``, or a dict).

    ``read`` fetches what the event's own camera needs (holding it, in a write-behind table); views
    outside the camera's events pass ``peek``-ing readers through :meth:`latest`.
    """

    def __init__(self, table: Table, keep: int = ALERTS_KEPT) -> None:
        self.table = table
        self.keep = keep

    def _get(self, key: bytes) -> Any:
        return self.table.get(key)

    def _peek(self, key: bytes) -> Any:
        peek = getattr(self.table, "peek", None)
        return peek(key) if peek is not None else self.table.get(key)

    def _record(self, camera_id: str, entry: dict[str, Any], *, peek: bool = False) -> dict[str, Any] | None:
        if _whole(entry):
            return entry
        value = (self._peek if peek else self._get)(alert_key(camera_id, str(entry["task_id"])))
        return value if isinstance(value, dict) else None

    def index(self, camera_id: str, *, peek: bool = False) -> list[dict[str, Any]]:
        value = (self._peek if peek else self._get)(camera_key(camera_id))
        return [e for e in value if isinstance(e, dict) and "task_id" in e] if isinstance(value, list) else []

    def on_group(self, camera_id: str, group_id: str, now_ms: float, cooldown_s: float) -> list[dict[str, Any]]:
        """The camera's alerts on ``group_id`` last raised within the cooldown of ``now_ms``, newest first:
        all that :func:`agents.alerting.merge_alert` and ``pending_measured`` can act on."""
        found = []
        for entry in self.index(camera_id):
            if entry.get("group_id") == group_id and now_ms - _at(entry) <= cooldown_s * 1000:
                alert = self._record(camera_id, entry)
                if alert is not None:
                    found.append(alert)
        return found

    def latest(self, camera_id: str, n: int) -> list[dict[str, Any]]:
        """The camera's ``n`` last alerts, newest update first, for a view (read without holding them)."""
        out = []
        for entry in self.index(camera_id, peek=True):
            alert = self._record(camera_id, entry, peek=True)
            if alert is not None:
                out.append(alert)
                if len(out) >= n:
                    break
        return out

    def record(self, camera_id: str, alert: dict[str, Any]) -> None:
        """Write ``alert`` (new, or an update of the camera's alert of the same task id) as its newest.

        Written through (a held alert was dropped by a rebalance, and the next owner judged a
        measured alert again, or never had it): the record first, so a crash between the two writes
        leaves at worst a record no index names, never an index naming no record.
        """
        task_id = str(alert["task_id"])
        old = self.index(camera_id)
        for entry in old:  # the old layout's whole alerts become records of their own
            if _whole(entry) and entry["task_id"] != task_id:
                put(self.table, alert_key(camera_id, str(entry["task_id"])), entry, through=True)
        entries = [
            {"task_id": e["task_id"], "group_id": e.get("group_id"), "at": _at(e)}
            for e in old
            if e["task_id"] != task_id
        ]
        at = float(alert.get("last_raised_at", alert.get("raised_at", 0.0)))
        entries.insert(0, {"task_id": task_id, "group_id": alert.get("group_id"), "at": at})
        put(self.table, alert_key(camera_id, task_id), alert, through=True)
        put(self.table, camera_key(camera_id), entries[: self.keep], through=True)
        for gone in entries[self.keep :]:
            try:
                del self.table[alert_key(camera_id, str(gone["task_id"]))]
            except KeyError:  # an old layout's whole alert had no record of its own
                pass
