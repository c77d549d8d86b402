#!/usr/bin/env bash
# Quick start: installs the dependencies, builds and installs inferd, writes
# /etc/inferd/inferd.conf when there is none (pointing at MODEL), and starts
# the server: `systemctl start inferd` when systemd runs the machine, else
# inferd in the foreground.
#
#   sudo scripts/setup.sh [MODEL]
#
# MODEL is a checkpoint directory (config.json, tokenizer.json,
# *.safetensors) or a Hugging Face cache name org/name. Default: the
# TinyStories test model in ../shared/models, when present.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

model=${1:-${INFERD_MODEL:-}}
if [ -z "$model" ] && [ -d ../shared/models/tinystories-656k ]; then
  model=$(cd ../shared/models/tinystories-656k && pwd)
fi
conf=/etc/inferd/inferd.conf
if [ -z "$model" ] && [ ! -f "$conf" ]; then
  echo "setup.sh: give a model: sudo scripts/setup.sh /path/to/checkpoint (or org/name from the Hugging Face cache)" >&2
  exit 2
fi
case "$model" in
  ""|/*) ;;
  */*) [ -d "$model" ] && model=$(cd "$model" && pwd) ;;   # a relative directory, not org/name
  *) [ -d "$model" ] && model=$(cd "$model" && pwd) ;;
esac

echo "==> Installing build dependencies"
$SUDO scripts/install-deps.sh

echo "==> Building"
[ -d build ] || meson setup build --buildtype=release
ninja -C build

echo "==> Installing"
$SUDO meson install -C build --quiet
inferd=$(meson introspect build --installed | python3 -c \
  'import json,sys; print(next(v for v in json.load(sys.stdin).values() if v.endswith("/sbin/inferd")))')

if [ ! -f "$conf" ]; then
  echo "==> Writing $conf (model: $model)"
  $SUDO install -d -m 0755 /etc/inferd
  sed "s|^path = .*|path = $model|" conf/inferd.conf | $SUDO tee "$conf" >/dev/null
else
  echo "==> Keeping the existing $conf"
fi
$SUDO "$inferd" --config "$conf" --check-config

if [ -d /run/systemd/system ]; then
  echo "==> Starting inferd.service"
  $SUDO systemd-sysusers
  $SUDO systemd-tmpfiles --create
  $SUDO systemctl daemon-reload
  $SUDO systemctl enable inferd.service
  # Type=notify: returns once the model is loaded and requests are served.
  $SUDO systemctl restart inferd.service
  listen=$(sed -n 's/^listen *= *//p' "$conf" | head -n1)
  echo
  echo "inferd is running: http://${listen:-127.0.0.1:8080}"
  echo "  inferctl status                 (or: journalctl -u inferd)"
  echo "  curl -s http://${listen:-127.0.0.1:8080}/v1/completions -d '{\"prompt\":\"Once upon a time\",\"max_tokens\":48}'"
else
  echo
  echo "NOTE: systemd is not running this machine (a container?), so inferd.service cannot be"
  echo "      started. Running inferd in the foreground instead: Ctrl-C stops it."
  echo
  exec "$inferd" --config "$conf"
fi
