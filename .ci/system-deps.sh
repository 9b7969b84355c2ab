#!/usr/bin/env bash
# System packages roadwatch needs: Java (Kafka broker), Maven (fetches the broker jars),
# redis-server (result cache), with --with-browser Debian's chromium (dashboard browser tests), and
# with --with-ops-tools prometheus (promtool and a real Prometheus for the alert test) and
# docker-compose (validates deploy/compose.yaml offline; no engine needed), and with --with-rtsp
# gst-rtsp-server through python3-gi (a real RTSP camera for the reconnect test).
# Installs what is missing when run as root. --check only reports; --quiet says less.
set -euo pipefail
check=0; quiet=0; browser=0; ops=0; rtsp=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --quiet) quiet=1 ;;
    --with-browser) browser=1 ;;
    --with-ops-tools) ops=1 ;;
    --with-rtsp) rtsp=1 ;;
  esac
done
missing=()
# Debian's python3 makes a venv without pip unless python3-venv is installed (ensurepip): only
# wanted while the clone has no working venv yet
[ -x .venv/bin/pip ] || python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "$browser" = 1 ]; then command -v chromium >/dev/null || missing+=(chromium); fi
if [ "$ops" = 1 ]; then
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
fi
if [ "$rtsp" = 1 ] && ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); \
    from gi.repository import GstRtspServer" 2>/dev/null; then
  missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
            gstreamer1.0-plugins-ugly)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$check" = 1 ]; then echo "missing: ${missing[*]}"; exit 1; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${missing[*]} (install them, or run this script as root)"
  # without redis-server roadwatch runs degraded (no cache); Java and Maven are required
  for m in "${missing[@]}"; do
    case "$m" in openjdk-17-jre-headless|maven) exit 1 ;; *) ;; esac
  done
  exit 0
fi
[ "$quiet" = 1 ] || echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
