#!/usr/bin/env bash
# Installs everything inferd needs to build, test and run on Debian 12.
# Idempotent; run as root (or through sudo).
set -euo pipefail
pkgs=(
  build-essential meson ninja-build pkg-config
  libcjson-dev libpcre2-dev libutf8proc-dev libzstd-dev libsodium-dev
  libmicrohttpd-dev libsystemd-dev libinih-dev libcurl4-openssl-dev
  libvulkan-dev glslang-tools mesa-vulkan-drivers vulkan-tools
  libcriterion-dev systemd curl python3
)
missing=()
# Node.js runs the OpenAI SDK integration test; keep an existing install (e.g. NodeSource).
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
