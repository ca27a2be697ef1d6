#!/usr/bin/env bash
# Install Debian's chromium where apt is available: one test loads report.html in a real
# headless browser. Without it that test is skipped (and says so); nothing else needs it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" chromium "for the report.html browser test" && exit 0
echo "note: chromium is not installed and apt-get is not usable here; the browser test will be skipped" >&2
