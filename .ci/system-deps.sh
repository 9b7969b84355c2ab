#!/usr/bin/env bash
# System packages roadwatch needs: Java (Kafka broker), Maven (fetches the broker jars),
# redis-server (result cache). Installs what is missing when run as root; --check only reports.
set -euo pipefail
mode="${1:-}"
missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$mode" = "--check" ]; then echo "missing: ${missing[*]}"; exit 1; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${missing[*]} (install them, or run this script as root)"
  [[ " ${missing[*]} " == *" redis-server "* ]] && [ ${#missing[@]} -eq 1 ] && exit 0  # redis optional: degraded
  exit 1
fi
[ "$mode" = "--quiet" ] || echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
