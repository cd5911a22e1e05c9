#!/usr/bin/env bash
# The system libraries the C++ runtime's tokenizer links statically: PCRE2 (libpcre2-dev) and
# utf8proc (libutf8proc-dev), for this machine, and with --arm64 also for the aarch64 cross build
# (scripts/device/build_device.sh). Installs what is missing with apt-get (as root, or through sudo);
# otherwise says what to install. Exit 0 when everything is there afterwards.
#
#   scripts/setup_system.sh [--arm64]
set -euo pipefail

PACKAGES=(libpcre2-dev libutf8proc-dev)
ARM64=0
for arg in "$@"; do
  case "$arg" in
    --arm64) ARM64=1 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_system: unknown option '$arg' (expected --arm64)" >&2; exit 2 ;;
  esac
done

# dpkg's view: a package is there when its status says "install ok installed".
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

wanted=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || wanted+=("$package")
  if [ "$ARM64" = 1 ]; then installed "$package:arm64" || wanted+=("$package:arm64"); fi
done
[ ${#wanted[@]} -eq 0 ] && { echo "setup_system: ${PACKAGES[*]} present"; exit 0; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v apt-get >/dev/null || { [ -n "$SUDO" ] && ! command -v sudo >/dev/null; }; then
  echo "setup_system: expected ${wanted[*]} installed, got them missing (hint: as root on Debian/Ubuntu:" \
       "apt-get install ${wanted[*]}; elsewhere install PCRE2 >= 10.34 and utf8proc >= 2.5 with static libraries)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ "$ARM64" = 1 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
fi
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q "${wanted[@]}" >/dev/null
echo "setup_system: installed ${wanted[*]}"
