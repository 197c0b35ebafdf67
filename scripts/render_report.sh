#!/usr/bin/env bash
# Render an llmbatch HTML report in headless Chromium and save a PNG, to see what it looks like
# without a desktop (the report opens offline: no network is used).
#
#   scripts/render_report.sh report.html [report.png] [WIDTHxHEIGHT]
#
# Needs Chromium. On Debian/Ubuntu: `sudo apt-get install -y chromium` (Ubuntu may name it
# chromium-browser); elsewhere any Chrome/Chromium binary on PATH, or set CHROMIUM=/path.
# The test suite runs this (CI installs Chromium: see .ci/run).
set -euo pipefail
report=${1:?usage: render_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]}
png=${2:-${report%.html}.png}
size=${3:-1280x3400}
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" > /dev/null; then browser=$name; break; fi
  done
fi
if [ -z "$browser" ]; then
  echo "render_report.sh: no Chromium found; install it (apt-get install chromium) or set CHROMIUM" >&2
  exit 2
fi
[ -f "$report" ] || { echo "render_report.sh: $report does not exist" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --virtual-time-budget lets plotly draw before the shot; --no-sandbox for root/containers;
# the --disable-* flags keep Chromium off the network (on a closed one it hangs without them).
"$browser" --headless --disable-gpu --no-sandbox --hide-scrollbars \
  --user-data-dir="$profile" --no-first-run --disable-extensions \
  --disable-background-networking --disable-component-update --disable-sync \
  --window-size="${size/x/,}" --virtual-time-budget=10000 \
  --screenshot="$(realpath -m "$png")" "file://$(realpath "$report")" > /dev/null 2>&1
[ -s "$png" ] || { echo "render_report.sh: Chromium wrote no image" >&2; exit 1; }
echo "$png"
