"""A camera's last alerts: a short index per camera (``alert_index``), one record per alert (``alert_records``).

The ``alerts`` table held a camera's last 100 alerts as one value (each alert about 1.1 KB with
its detection), rewritten whole, through to RocksDB and the changelog, on every alert. Its cost
grew with the history: in the capacity soak (100 cameras, about 50 alerts/s) it became 110 KB of
JSON, a put and a changelog record per alert, and by minute 8 the largest share of the worker's
CPU (py-spy: the JSON encoder 4% of the samples at minute 1, 12% at minute 8); the worker fell
behind.

Now a camera's index lists its alerts, newest update first, at most ``keep``, as
``[task_id, group_id, last raised (ms), first raised (ms)]``; each alert is a record of its own
under :func:`record_key`. Raising or updating an alert writes its record, then the index; an alert
pushed out of the last ``keep`` is deleted first, so a crash between the writes leaves at worst an
index entry naming no record (skipped), not a record nothing will delete. What merging acts on
(the alerts on one group within the cooldown) is read through the index, a record each.

They are new tables, not a new layout of ``alerts``: a worker of the code before (a rolling
upgrade, a rollback) keeps reading and writing ``alerts`` as it did, and would have failed on
index entries there. ``alerts`` is read as ``legacy``: a camera's whole alerts in it count as its
alerts (merged into, shown), and its next alert moves them into the new tables and deletes them
there. While old and new workers both run, each sees the other's alerts only through the topic
and the cache: an alert on a group may be raised once by each.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from streams.tables import alert_index_live, alert_records, alerts_legacy, camera_key
from streams.write_behind import put

#: Alerts kept a camera (``docs/ARCHITECTURE.md``: the last 100, per camera and overall).
ALERTS_KEPT = 100

#: Between the camera and the task id in a record's key: camera ids are letters, digits, "_.-".
SEP = b"\x00"

Table = MutableMapping[bytes, Any]


def record_key(camera_id: str, task_id: str) -> bytes:
    return camera_key(camera_id) + SEP + task_id.encode()


@dataclass(frozen=True)
class Entry:
    """One alert of a camera's index; ``whole`` is the alert itself where it comes from ``legacy``."""

    task_id: str
    group_id: str
    at: float  # last raised, ms
    raised_at: float  # first raised, ms
    whole: dict[str, Any] | None = None

    def row(self) -> list[Any]:
        return [self.task_id, self.group_id, round(self.at), round(self.raised_at)]


def _of_alert(alert: dict[str, Any]) -> Entry:
    raised = float(alert.get("raised_at", 0.0))
    return Entry(
        str(alert["task_id"]), str(alert.get("group_id", "")), float(alert.get("last_raised_at", raised)), raised
    )


def _of_row(row: Any) -> Entry | None:
    if isinstance(row, list) and len(row) == 4:
        return Entry(str(row[0]), str(row[1]), float(row[2]), float(row[3]))
    return None


def index_entries(value: Any) -> list[Entry]:
    """The entries of one ``alert_index`` value (newest first)."""
    return [e for e in map(_of_row, value) if e is not None] if isinstance(value, list) else []


def legacy_alerts(value: Any) -> list[dict[str, Any]]:
    """The whole alerts of one ``alerts`` value (the layout before the index)."""
    if not isinstance(value, list):
        return []
    return [a for a in value if isinstance(a, dict) and "task_id" in a and "level" in a]


def newest(entries: Iterable[tuple[str, Entry]], n: int) -> list[tuple[str, Entry]]:
    """The ``n`` (camera, entry) first raised last: what ``/alerts/`` shows of every camera's index."""
    return sorted(entries, key=lambda ce: -ce[1].raised_at)[:n]


def _peek(table: Table, key: bytes) -> Any:
    """A read that does not hold what the table gave (a view, outside the events that own the key)."""
    peek = getattr(table, "peek", None)
    return peek(key) if peek is not None else table.get(key)


class AlertBook:
    """The cameras' alerts over ``index`` and ``records`` (the worker's write-behind tables, or dicts),
    with ``legacy`` (the ``alerts`` table) read for what the code before left there."""

    def __init__(self, index: Table, records: Table, legacy: Table | None = None, keep: int = ALERTS_KEPT) -> None:
        self.index = index
        self.records = records
        self.legacy = legacy
        self.keep = keep
        #: cameras found without legacy alerts since the last rebalance: a miss in a Faust table
        #: probes every partition's database, and this one is asked on every alert
        self.no_legacy: set[bytes] = set()

    def forget(self) -> None:
        """After a rebalance: the cameras owned now may have legacy alerts (an old worker's)."""
        self.no_legacy.clear()

    def entries(self, camera_id: str, *, peek: bool = False) -> list[Entry]:
        """The camera's alerts, newest update first: its index, and its legacy alerts not in it."""
        key = camera_key(camera_id)
        found = index_entries(_peek(self.index, key) if peek else self.index.get(key))
        if self.legacy is not None and key not in self.no_legacy:
            old = legacy_alerts(_peek(self.legacy, key) if peek else self.legacy.get(key))
            if old:
                known = {e.task_id for e in found}
                for alert in old:  # each once (a list of before could hold a task id twice)
                    if str(alert["task_id"]) not in known:
                        known.add(str(alert["task_id"]))
                        found.append(replace(_of_alert(alert), whole=alert))
                found.sort(key=lambda e: -e.at)
            elif not peek:
                self.no_legacy.add(key)
        return found

    def alert(self, camera_id: str, entry: Entry, *, peek: bool = False) -> dict[str, Any] | None:
        if entry.whole is not None:
            return entry.whole
        key = record_key(camera_id, entry.task_id)
        value = _peek(self.records, key) if peek else self.records.get(key)
        return value if isinstance(value, dict) else None

    def on_group(self, camera_id: str, group_id: str, now_ms: float, cooldown_s: float) -> list[dict[str, Any]]:
        """The camera's alerts on ``group_id`` last raised within the cooldown of ``now_ms``, newest first:
        all that :func:`agents.alerting.merge_alert` and ``pending_measured`` act on. The cooldown is
        judged on the record too: an index written before its record's last update (a crash between
        the two writes) must not let a repeat raise a second alert."""
        found = []
        for entry in self.entries(camera_id):
            if entry.group_id != group_id:
                continue
            alert = self.alert(camera_id, entry)
            if alert is None:
                continue
            last = max(entry.at, float(alert.get("last_raised_at", alert.get("raised_at", 0.0))))
            if now_ms - last <= cooldown_s * 1000:
                found.append(alert)
        return found

    def latest(self, camera_id: str, n: int) -> list[dict[str, Any]]:
        """The camera's ``n`` last alerts, newest update first, for a view (read without holding them)."""
        out = []
        for entry in self.entries(camera_id, peek=True):
            alert = self.alert(camera_id, entry, peek=True)
            if alert is not None:
                out.append(alert)
                if len(out) >= n:
                    break
        return out

    def record(self, camera_id: str, alert: dict[str, Any]) -> None:
        """Write ``alert`` (new, or an update of the camera's alert with the same task id) as its newest.

        Written through (held, a rebalance dropped it, and the next owner judged a measured alert
        again, or never had it). The camera's legacy alerts move into the new tables here.
        """
        new = _of_alert(alert)
        entries = [new, *(e for e in self.entries(camera_id) if e.task_id != new.task_id)]
        kept, gone = entries[: self.keep], entries[self.keep :]
        for entry in gone:
            if entry.whole is None:
                _delete(self.records, record_key(camera_id, entry.task_id))
        for entry in kept[1:]:
            if entry.whole is not None:
                put(self.records, record_key(camera_id, entry.task_id), entry.whole, through=True)
        put(self.records, record_key(camera_id, new.task_id), alert, through=True)
        put(self.index, camera_key(camera_id), [e.row() for e in kept], through=True)
        if self.legacy is not None and any(e.whole is not None for e in entries):
            _delete(self.legacy, camera_key(camera_id))
            self.no_legacy.add(camera_key(camera_id))


def _delete(table: Table, key: bytes) -> None:
    try:
        del table[key]
    except KeyError:  # a dict without it (Faust's tables delete what they lack without a word)
        pass


#: The worker's alerts, on its tables.
alert_book = AlertBook(alert_index_live, alert_records, alerts_legacy)
