# Cross build for 64-bit ARM Linux with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu); scripts/device/build_device.sh uses it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
# Debian multiarch: arm64 -dev packages (libpcre2-dev:arm64 ...) live in /usr/lib/aarch64-linux-gnu
# (cmake/text_libraries.cmake looks there).
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# The ExecuTorch SDK is an unpacked wheel outside the sysroot, named by an absolute path.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE NEVER)
