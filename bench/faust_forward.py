"""A minimal Faust forwarder (one agent, one ``await topic.send()`` per message) for the Faust-vs-raw
comparison of ``bench/pipeline.py``. Configured by environment: BENCH_KAFKA, BENCH_SRC, BENCH_DST, BENCH_APP."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ.get("BENCH_APP", "bench-forward"),
    broker=os.environ.get("BENCH_KAFKA", "kafka://127.0.0.1:9092"),
    store="memory://",
    web_enabled=False,
    broker_session_timeout=10,
    broker_rebalance_timeout=10,
    broker_heartbeat_interval=3,
    consumer_auto_offset_reset="earliest",
    topic_partitions=8,
)
src = app.topic(
    os.environ.get("BENCH_SRC", "bench-src"),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
dst = app.topic(
    os.environ.get("BENCH_DST", "bench-dst"),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)


@app.agent(src)
async def forward(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        await dst.send(key=event.key, value=event.value)


if __name__ == "__main__":
    app.main()
