# PCRE2 (8-bit, Unicode properties) and utf8proc for the tokenizer (runtime_cpp/src/text), as
# static archives from the system: Debian's libpcre2-dev and libutf8proc-dev, for the target's
# multiarch triple (x86_64-linux-gnu, or aarch64-linux-gnu in the cross build, whose toolchain
# file sets CMAKE_LIBRARY_ARCHITECTURE). scripts/setup_system.sh installs them.
set(_etlora_multiarch "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
foreach(_name pcre2 utf8proc)
  if(_name STREQUAL "pcre2")
    set(_header pcre2.h)
    set(_archive libpcre2-8.a)
    set(_package libpcre2-dev)
  else()
    set(_header utf8proc.h)
    set(_archive libutf8proc.a)
    set(_package libutf8proc-dev)
  endif()
  string(TOUPPER "${_name}" _upper)
  # Outside the cross toolchain's sysroot: Debian keeps multiarch archives under /usr/lib/<triple>.
  find_path(ETLORA_${_upper}_INCLUDE_DIR ${_header} HINTS /usr/include NO_CMAKE_FIND_ROOT_PATH)
  find_library(ETLORA_${_upper}_LIBRARY NAMES ${_archive} HINTS ${_etlora_multiarch} NO_CMAKE_FIND_ROOT_PATH)
  if(NOT ETLORA_${_upper}_INCLUDE_DIR OR NOT ETLORA_${_upper}_LIBRARY)
    set(_arch_suffix "")
    if(CMAKE_CROSSCOMPILING)
      set(_arch_suffix ":${CMAKE_SYSTEM_PROCESSOR}")
      string(REPLACE "aarch64" "arm64" _arch_suffix "${_arch_suffix}")
    endif()
    message(FATAL_ERROR
      "etlora: expected ${_header} and ${_archive} for ${CMAKE_LIBRARY_ARCHITECTURE} (the tokenizer needs them), "
      "got include '${ETLORA_${_upper}_INCLUDE_DIR}', library '${ETLORA_${_upper}_LIBRARY}' "
      "(hint: scripts/setup_system.sh, or apt-get install ${_package}${_arch_suffix})")
  endif()
  add_library(etlora::${_name} STATIC IMPORTED GLOBAL)
  set_target_properties(etlora::${_name} PROPERTIES
    IMPORTED_LOCATION "${ETLORA_${_upper}_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${ETLORA_${_upper}_INCLUDE_DIR}")
endforeach()
# utf8proc.h declares its functions dllimport unless told the archive is static (Windows only,
# harmless here).
set_property(TARGET etlora::utf8proc APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS UTF8PROC_STATIC)
