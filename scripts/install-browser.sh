#!/usr/bin/env bash
# Install Debian's chromium where apt is available: one test loads report.html in a real
# headless browser. Without it that test is skipped (and says so); nothing else needs it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" != "none" ]; then
    echo "installing Debian package chromium (for the report.html browser test)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    exit 0
  fi
fi
echo "note: chromium is not installed and apt-get is not usable here; the browser test will be skipped" >&2
