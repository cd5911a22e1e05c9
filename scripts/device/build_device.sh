#!/usr/bin/env bash
# Cross-build etlora_runner and the runtime library for a device CPU.
#
#   scripts/device/build_device.sh --arch aarch64 --out DIR [--sdk SDK_DIR] [--build-dir B]
#
# DIR is the folder to copy to the device: DIR/bin/etlora_runner finds DIR/lib/*.so through
# its rpath ($ORIGIN/../lib), so `qemu-aarch64 -L /usr/aarch64-linux-gnu -E
# LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib DIR/bin/etlora_runner --bundle B ...` runs here as it
# would on a board (the -E keeps the guest off Debian's libc6:arm64, another glibc build, when
# multiarch has installed it: with it the runner hangs). Without --sdk, the executorch wheel for the
# architecture is fetched with pip (the package registry) and its C++ SDK unpacked. Needs the
# cross compiler (apt-get install g++-aarch64-linux-gnu) and CMake >= 3.28. See docs/device.md.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
EXECUTORCH_VERSION="1.5.1"  # the runtime is written against this release (pyproject.toml)
ARCH="" OUT="" SDK="" BUILD=""
fail() { echo "build_device: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="${2:-}"; shift 2 ;;
    --out) OUT="${2:-}"; shift 2 ;;
    --sdk) SDK="${2:-}"; shift 2 ;;
    --build-dir) BUILD="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option '$1' (expected --arch, --out, --sdk, --build-dir)" ;;
  esac
done

# What each architecture needs: toolchain file, compiler, ELF machine number, wheel platform.
case "$ARCH" in
  aarch64)
    TOOLCHAIN="$REPO/cmake/aarch64-linux-gnu.cmake"; COMPILER="aarch64-linux-gnu-g++"
    ELF_MACHINE=183; PLATFORM="manylinux_2_28_aarch64"; TRIPLE="aarch64-linux-gnu" ;;
  "") fail "--arch is required (known: aarch64)" ;;
  *) fail "unknown architecture '$ARCH' (known: aarch64)" ;;
esac
[ -n "$OUT" ] || fail "--out DIR is required"
command -v "$COMPILER" >/dev/null || fail "$COMPILER not found (hint: apt-get install g++-aarch64-linux-gnu)"
# The tokenizer's static PCRE2 and utf8proc for the target (Debian multiarch, cmake/text_libraries.cmake).
for library in libpcre2-8.a libutf8proc.a; do
  [ -f "/usr/lib/$TRIPLE/$library" ] ||
    fail "expected /usr/lib/$TRIPLE/$library for $ARCH (the tokenizer links it), got none (hint: scripts/setup_system.sh --arm64)"
done
# The cmake beside this python3 first (pip's `cmake` package, the dev extra), then PATH's.
CMAKE="$(dirname "$(command -v python3)")/cmake"
[ -x "$CMAKE" ] || CMAKE="$(command -v cmake || true)"
[ -n "$CMAKE" ] || fail "cmake not found (hint: pip install 'cmake>=3.28')"
CMAKE_VERSION="$("$CMAKE" --version | head -n 1 | awk '{print $3}')"
printf '%s\n3.28\n' "$CMAKE_VERSION" | sort -V -C 2>/dev/null && [ "$CMAKE_VERSION" != "3.28" ] &&
  fail "cmake $CMAKE_VERSION is older than 3.28, which ExecuTorch's CMake package needs (hint: pip install 'cmake>=3.28')"
BUILD="${BUILD:-$REPO/build-device/$ARCH}"
mkdir -p "$BUILD"
# One build at a time per build folder: two runs at once (parallel test workers) would share one CMake
# cache, and the second configure would redirect the first one's install.
if command -v flock >/dev/null; then
  exec 9>"$BUILD/.lock"
  flock 9
fi

if [ -z "$SDK" ]; then
  WHEELS="$BUILD/wheels"
  mkdir -p "$WHEELS"
  WHEEL="$(ls "$WHEELS"/executorch-"$EXECUTORCH_VERSION"-*"$ARCH".whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$WHEEL" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$PLATFORM" \
      --python-version 3.11 "executorch==$EXECUTORCH_VERSION" -d "$WHEELS" ||
      fail "could not download executorch==$EXECUTORCH_VERSION for $PLATFORM (hint: --sdk DIR with an unpacked wheel's executorch/ folder)"
    WHEEL="$(ls "$WHEELS"/executorch-"$EXECUTORCH_VERSION"-*"$ARCH".whl | head -n 1)"
  fi
  SDK="$BUILD/sdk/executorch"
  if [ ! -f "$SDK/lib/libexecutorch.so" ]; then
    rm -rf "$BUILD/sdk" && mkdir -p "$BUILD/sdk"
    python3 -m zipfile -e "$WHEEL" "$BUILD/sdk" || fail "could not unpack $WHEEL"
  fi
fi

# The SDK: ExecuTorch's CMake package, for this architecture, of the release the runtime expects.
SDK="$(cd "$SDK" 2>/dev/null && pwd)" || fail "--sdk: folder '$SDK' not found"
[ -f "$SDK/lib/cmake/executorch/executorch-config.cmake" ] && [ -f "$SDK/lib/libexecutorch.so" ] ||
  fail "$SDK is not an ExecuTorch SDK (expected lib/cmake/executorch/executorch-config.cmake and lib/libexecutorch.so: the executorch/ folder of an unpacked wheel)"
MACHINE="$(od -An -t u2 -j 18 -N 2 "$SDK/lib/libexecutorch.so" | tr -d ' ')"
[ "$MACHINE" = "$ELF_MACHINE" ] ||
  fail "$SDK is an SDK for ELF machine $MACHINE, not $ARCH ($ELF_MACHINE) (hint: the wheel for $PLATFORM)"
SDK_VERSION="$(sed -n 's/^set(EXECUTORCH_BUILD_VERSION "\([^"+]*\).*/\1/p' "$SDK/lib/cmake/executorch/executorch-config-version.cmake")"
[ "$SDK_VERSION" = "$EXECUTORCH_VERSION" ] ||
  fail "$SDK is ExecuTorch ${SDK_VERSION:-(unknown)}, the runtime is written for $EXECUTORCH_VERSION"

GENERATOR=()
command -v ninja >/dev/null && [ ! -f "$BUILD/cmake/CMakeCache.txt" ] && GENERATOR=(-G Ninja)
started=$(date +%s)
"$CMAKE" -S "$REPO" -B "$BUILD/cmake" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DETLORA_EXECUTORCH_SDK="$SDK" -DETLORA_BUILD_TESTS=OFF \
  -DCMAKE_INSTALL_PREFIX="$(mkdir -p "$OUT" && cd "$OUT" && pwd)" >"$BUILD/configure.log" ||
  fail "cmake configure failed (log: $BUILD/configure.log)"
"$CMAKE" --build "$BUILD/cmake" -j "$(nproc)" >"$BUILD/build.log" 2>&1 || fail "build failed (log: $BUILD/build.log)"
"$CMAKE" --install "$BUILD/cmake" --prefix "$(cd "$OUT" && pwd)" >"$BUILD/install.log" || fail "install failed (log: $BUILD/install.log)"
seconds=$(( $(date +%s) - started ))

echo "built etlora for $ARCH in ${seconds} s (ExecuTorch $SDK_VERSION SDK at $SDK) into $OUT:"
( cd "$OUT" && find bin lib -type f -printf '  %-48p %10s bytes\n' | sort )
echo "  total $(du -sb "$OUT" | cut -f1) bytes"
# The same figures as JSON beside the install (what a device install costs on disk).
python3 - "$OUT" "$ARCH" "$seconds" "$SDK_VERSION" "$("$COMPILER" --version | head -n 1)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" <<'PY'
import json, sys
from pathlib import Path
out, arch, seconds, version, compiler, host = sys.argv[1:]
files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(Path(out).rglob("*")) if p.is_file() and p.name != "build_info.json"}
info = {"arch": arch, "build_seconds": int(seconds), "executorch": version, "compiler": compiler, "host_cpu": host,
        "files": files, "total_bytes": sum(files.values())}
(Path(out) / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
PY
