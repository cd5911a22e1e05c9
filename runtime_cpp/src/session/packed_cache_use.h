// One Session's use of the packed cache file (the packed foundation weights on
// disk, packed_cache.h): which path the XNNPACK backend gets for the load
// (plan), and what happened, once it loaded (settle).
//
// Within one process the backend keeps one cache per path string, so a
// process-wide table remembers the path a live Session handed over: a second
// Session of the same file passes the same string and shares the packed
// weights already in memory, even when that string was a temp name since
// renamed. Opens that use a packed file run one at a time (the lock below).
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <etlora/packed_cache.h>
#include <etlora/status.h>

namespace etlora {

class PackedCacheUse {
 public:
  // Decides the backend path for `final_path` (a path whose name comes from
  // packed_cache_file_name). Holds the open lock until settle() or destruction.
  static StatusOr<std::unique_ptr<PackedCacheUse>> plan(const std::string& final_path,
                                                       PackedCacheResidency residency);

  // The string for the backend's packed_cache_path; empty: give none.
  const std::string& backend_path() const { return backend_path_; }

  // The file name must carry the program's foundation fingerprint.
  Status check_name(const std::string& foundation_weights_id) const;

  // After the backend packed or mapped (load_method succeeded): renames a
  // complete temp file into place, measures, copies the packed weights into
  // memory (kCopy), registers this Session.
  PackedCacheInfo settle();

  // Unregisters; removes a temp file the load left behind.
  ~PackedCacheUse();

 private:
  PackedCacheUse() = default;
  std::string publish_written_file() const;  // "" on success, else what failed

  std::unique_lock<std::mutex> open_lock_;
  std::string final_path_;
  std::string backend_path_;
  PackedCacheResidency residency_ = PackedCacheResidency::kCopy;
  PackedCacheSource expected_ = PackedCacheSource::kMemoryOnly;
  std::string note_;
  int64_t mtime_before_ns_ = 0;
  double check_seconds_ = 0;
  bool check_hashed_ = false;
  bool registered_ = false;
};

// Distinct packed cache files that live Sessions of this process hold.
int64_t packed_cache_files_in_use();

}  // namespace etlora
