// The packed cache file: XNNPACK's own on-disk copy of the foundation
// weights after packing, so that a later start maps them instead of packing
// again (SmolLM2-135M: about 2 s). The backend writes and reads the file; this
// header names it, checks it and says how a Session used it.
//
// What the executorch 1.5.1 XNNPACK backend does (runtime_cpp/README.md):
// the path is a per-load option (`packed_cache_path` in the load's backend
// options, honoured only with `weight_cache_enabled`); at the end of packing
// it writes the file itself (no separate save call), in place under the path
// it was given; it keeps an exclusive flock on the file while a process holds
// it mapped; it reports no counters. Session adds: a temp name renamed into
// place once complete, a footer check before handing a file over, and these
// figures measured from the file and /proc/self/maps, and a checksum file.
#pragma once

#include <cstdint>
#include <string>

#include "etlora/status.h"

namespace etlora {

// The executorch release this runtime was built against (its XNNPACK packs).
const char* executorch_version();

// The file name for a foundation as stored: the first 32 hex digits of its
// weights id (the fingerprint for fp32, a hash of it and the quantization
// otherwise), the executorch version and this machine's signature, so another
// foundation, quantization, runtime or CPU never maps it:
// "xnnpack-packed-<weights_id[:32]>-et<version>-<arch>-<features hash>.bin".
std::string packed_cache_file_name(const std::string& foundation_weights_id);

// "<arch>-<8 hex>": the architecture and a hash of the CPU feature list, which
// decide XNNPACK's microkernels and so the layout of its packed weights.
std::string machine_signature();

// The longest path the backend takes (its option strings hold 255 bytes); a
// Session needs room for a temp suffix on top.
constexpr size_t kMaxPackedCachePath = 230;

// Where a bundle's packed cache file goes: `cache_dir`, or
// <bundle_dir>/.etlora-cache when it is empty, created if missing, then the
// file name for the foundation. The one rule for the runner and the Python
// session. An unusable folder (cannot be created, not writable, a path too
// long for the backend) is an error whose message says why: callers turn the
// packed cache off with that one warning rather than fail.
StatusOr<std::string> packed_cache_path(const std::string& bundle_dir, const std::string& cache_dir,
                                        const std::string& foundation_weights_id);

// The footer of a packed weight file as the 1.5.1 backend writes it, checked
// without trusting it: magic, layout version, and that every index entry lies
// inside the file. A file that passes can still hold damaged packed bytes
// (the backend keeps no checksum); see README.
struct PackedFileCheck {
  bool valid = false;
  std::string problem;  // empty when valid
  int64_t file_bytes = 0;
  int64_t entries = 0;  // entries in the file's index (packed weights)
};
PackedFileCheck check_packed_cache_file(const std::string& path);

// The backend keeps no checksum, so etlora keeps one beside the file,
// "<file>.sum": "etlora-packed-sum 1 <bytes> <16 hex> <device> <inode> <mtime ns>\n",
// a fast 64-bit hash of every byte (catches damage, not tampering) and the
// identity of the file it was computed on. Written from the complete temp file
// before it is renamed into place (rename keeps device, inode and mtime).
std::string packed_cache_sum_path(const std::string& packed_path);
// The sum line for `path`, or "" when unreadable.
std::string packed_cache_sum_line(const std::string& path);
// Checks `packed_path` against its .sum: when size, device, inode and mtime
// are those recorded, the file has not been written since it was hashed and
// is trusted without reading it; otherwise its bytes are hashed again.
struct PackedSumCheck {
  std::string problem;  // empty when the file matches
  bool hashed = false;  // whether the bytes were read and hashed
};
PackedSumCheck check_packed_cache_sum(const std::string& packed_path);

// How a Session's load used the packed file.
enum class PackedCacheSource {
  kOff,         // no packed_cache_path given
  kMapped,      // the file existed and the backend mapped it: nothing packed
  kWritten,     // packed fresh, and the file written (temp name, then renamed)
  kShared,      // another live Session of this process had it mapped already
  kMemoryOnly,  // packed into memory; the file was not used (see note)
};
const char* packed_cache_source_name(PackedCacheSource source);

// Where the packed weights live once loaded. The backend maps the file;
// kCopy then moves them into private anonymous memory at the same addresses.
// Why copy by default: on the machine we benchmark on, XNNPACK's GEMM reads
// page-cache pages of an older file about 20% slower than anonymous memory
// (decode 30 vs 37 tok/s on SmolLM2, docs/results/), while the copy adds only
// about 0.2 s to a later start (packing takes 2 s). kMap keeps the mapping:
// pages stay shared with the page cache (no second copy, cheaper start), for
// devices where mapped pages read as fast.
enum class PackedCacheResidency {
  kCopy,
  kMap,
};

// Figures of one Session's packed file, all measured here (the backend has
// no counters): no entry, hit or miss counts beyond what the file holds.
struct PackedCacheInfo {
  std::string path;  // the file (empty when off)
  PackedCacheSource source = PackedCacheSource::kOff;
  int64_t file_bytes = 0;    // size of the file after the load (0 if none)
  int64_t file_entries = 0;  // entries in its index
  int64_t mapped_bytes = 0;  // bytes of it the backend mapped for the load (/proc/self/maps)
  int64_t copied_bytes = 0;  // of those, moved into private memory (kCopy); 0 when kept mapped
  double copy_seconds = 0;   // of load_seconds: that copy
  double load_seconds = 0;   // Session::open, start to end
  double check_seconds = 0;  // of which: footer and checksum check of an existing file
  bool check_hashed = false; // whether that check hashed the bytes (identity changed)
  std::string note;          // why the file was replaced or not used
};

// Bytes of `path`'s file (by device and inode) mapped into this process.
int64_t mapped_bytes_of(const std::string& path);

// Replaces every mapping of `path`'s file in this process by a private
// anonymous copy at the same address and with the same protection (mremap),
// so that pointers into it stay valid. A mapping that cannot be copied stays
// mapped and is named in `problem`.
struct MemoryCopy {
  int64_t bytes = 0;
  double seconds = 0;
  std::string problem;  // empty when every mapping was copied
};
MemoryCopy copy_file_mappings_to_memory(const std::string& path);

}  // namespace etlora
