#!/usr/bin/env bash
# Installs the system packages pushcast needs, only those missing (Debian/Ubuntu).
#   scripts/deps.sh build   protoc + the well-known .proto files (to compile)
#   scripts/deps.sh test    + the real peers the tests run: etcd, ffmpeg, nginx-rtmp, stunnel
set -euo pipefail

want=(protobuf-compiler libprotobuf-dev)
if [ "${1:-build}" = "test" ]; then
  want+=(etcd-server etcd-client ffmpeg nginx libnginx-mod-rtmp stunnel4 ca-certificates prometheus)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
