#!/usr/bin/env bash
# Usage: ensure-debian-package.sh COMMAND PACKAGE
# Installs PACKAGE from Debian's packages when COMMAND is not on PATH.
set -euo pipefail
command_name="$1"
package="$2"
if command -v "$command_name" >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$command_name is not installed and apt-get is not available." >&2
    echo "Install $package (its $command_name must be on PATH), then run this again." >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing $package from Debian's packages"
# A fresh machine has no package lists yet; refresh them once per run of this script.
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
command -v "$command_name" >/dev/null
