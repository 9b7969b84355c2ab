"""A real RTSP server on loopback for tests and demos: Debian's gst-rtsp-server through python3-gi.

``/usr/bin/python3 -m ops.rtsp_server --port 8554`` serves ``rtsp://127.0.0.1:8554/cam``: a
moving ball (GStreamer's ``videotestsrc pattern=ball``), H.264 over RTP, the way IP cameras
stream. It runs under the system Python, not the venv: ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0`` are Debian packages (``.ci/system-deps.sh --with-rtsp``).
"""

from __future__ import annotations

import argparse

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m ops.rtsp_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args(argv)

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    w, h = args.size.split("x")
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(w=w, h=h, fps=args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    server.attach(None)
    print(f"rtsp://{args.host}:{args.port}{args.mount} ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
