#!/usr/bin/env bash
# apt-install.sh PACKAGE WHY: install a Debian package as root or with sudo where apt-get exists.
# Exits 0 once installed; exits 1 (having printed nothing) where that is not possible here.
set -euo pipefail
package=$1
why=$2
command -v apt-get >/dev/null 2>&1 || exit 1
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else exit 1; fi
echo "installing Debian package $package ($why)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >/dev/null
