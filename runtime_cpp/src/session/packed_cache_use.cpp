// PackedCacheUse (packed_cache_use.h).
#include "session/packed_cache_use.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <unordered_map>

namespace etlora {

namespace {

struct LiveFile {
  std::string backend_path;  // the string the backend's cache is keyed by
  int64_t sessions = 0;
  int64_t copied_bytes = 0;  // moved into memory by kCopy Sessions (no longer mapped)
};

std::mutex& open_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::mutex& table_mutex() {
  static std::mutex mutex;
  return mutex;
}

// final path -> the live backend cache for it
std::unordered_map<std::string, LiveFile>& live_files() {
  static std::unordered_map<std::string, LiveFile> table;
  return table;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string errno_text() { return std::strerror(errno); }

std::string temp_name(const std::string& final_path) {
  static std::atomic<int> counter{0};
  return final_path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

// Temp files of writers that died: "<name>.tmp-<pid>-..." whose process is
// gone (ESRCH) and that nobody touched for 10 minutes (a pid from another
// pid namespace may look dead while it is writing).
void remove_dead_writers_files(const std::string& final_path) {
  const std::string dir = parent_dir(final_path);
  const std::string prefix = base_name(final_path) + ".tmp-";
  DIR* listing = ::opendir(dir.c_str());
  if (!listing) return;
  const int64_t now_ns = static_cast<int64_t>(std::time(nullptr)) * 1000000000;
  constexpr int64_t kIdleNs = 600LL * 1000000000;
  while (const dirent* entry = ::readdir(listing)) {
    const std::string name = entry->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    const std::string path = dir + "/" + name;
    if (pid <= 0 || pid == ::getpid() || now_ns - mtime_ns(path) < kIdleNs) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) ::unlink(path.c_str());
  }
  ::closedir(listing);
}

}  // namespace

int64_t packed_cache_files_in_use() {
  std::lock_guard<std::mutex> lock(table_mutex());
  return static_cast<int64_t>(live_files().size());
}

StatusOr<std::unique_ptr<PackedCacheUse>> PackedCacheUse::plan(const std::string& final_path,
                                                              PackedCacheResidency residency) {
  if (final_path.size() > kMaxPackedCachePath) {
    return Status(StatusCode::kInvalidArgument,
                  "packed cache path " + final_path + ": expected at most " +
                      std::to_string(kMaxPackedCachePath) + " characters, got " +
                      std::to_string(final_path.size()) +
                      "; hint: the XNNPACK backend truncates longer option strings, choose a "
                      "shorter cache folder");
  }
  std::unique_ptr<PackedCacheUse> use(new PackedCacheUse());
  use->open_lock_ = std::unique_lock<std::mutex>(open_mutex());
  use->final_path_ = final_path;
  use->residency_ = residency;
  {
    std::lock_guard<std::mutex> lock(table_mutex());
    auto live = live_files().find(final_path);
    if (live != live_files().end()) {
      use->backend_path_ = live->second.backend_path;
      use->expected_ = PackedCacheSource::kShared;
      return use;
    }
  }
  if (exists(final_path)) {
    const auto check_start = std::chrono::steady_clock::now();
    const PackedFileCheck check = check_packed_cache_file(final_path);
    const PackedSumCheck sum = check.valid ? check_packed_cache_sum(final_path) : PackedSumCheck{};
    const std::string problem = check.valid ? sum.problem : check.problem;
    use->check_hashed_ = sum.hashed;
    use->check_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - check_start).count();
    if (problem.empty()) {
      use->backend_path_ = final_path;
      use->expected_ = PackedCacheSource::kMapped;
      use->mtime_before_ns_ = mtime_ns(final_path);
      return use;
    }
    // Never hand a damaged file to the backend: it would map wrong weights,
    // or rewrite the file in place under its final name.
    if (::unlink(final_path.c_str()) != 0) {
      use->note_ = problem + "; could not remove it (" + errno_text() + "), packed in memory";
      return use;
    }
    ::unlink(packed_cache_sum_path(final_path).c_str());
    use->note_ = problem + "; removed and written again";
  }
  const std::string dir = parent_dir(final_path);
  if (::access(dir.c_str(), W_OK) != 0) {
    use->note_ += (use->note_.empty() ? "" : "; ") + std::string("folder ") + dir +
                  " is not writable (" + errno_text() + "), packed in memory";
    return use;
  }
  remove_dead_writers_files(final_path);
  use->backend_path_ = temp_name(final_path);
  use->expected_ = PackedCacheSource::kWritten;
  return use;
}

Status PackedCacheUse::check_name(const std::string& foundation_weights_id) const {
  const std::string expected = packed_cache_file_name(foundation_weights_id);
  if (base_name(final_path_) == expected) return Status::ok_status();
  return Status(StatusCode::kInvalidArgument,
                "packed cache path " + final_path_ + ": expected the file name " + expected +
                    " (foundation weights id and executorch version), got " +
                    base_name(final_path_) +
                    "; hint: build the name with packed_cache_file_name() so that another "
                    "foundation or runtime never maps this file");
}

// The checksum file first, then the packed file, each under a temp name
// renamed into place: a reader never sees a packed file without its sum.
std::string PackedCacheUse::publish_written_file() const {
  const std::string sum = packed_cache_sum_line(backend_path_);
  if (sum.empty()) return "could not read back " + backend_path_;
  const std::string sum_temp = packed_cache_sum_path(backend_path_);
  {
    std::ofstream out(sum_temp, std::ios::binary | std::ios::trunc);
    out << sum;
    if (!(out.flush())) {
      ::unlink(sum_temp.c_str());
      return "could not write " + sum_temp + " (" + errno_text() + ")";
    }
  }
  if (::rename(sum_temp.c_str(), packed_cache_sum_path(final_path_).c_str()) != 0) {
    ::unlink(sum_temp.c_str());
    return "could not rename " + sum_temp + " (" + errno_text() + ")";
  }
  if (::rename(backend_path_.c_str(), final_path_.c_str()) != 0) {
    return "could not rename " + backend_path_ + " to " + final_path_ + " (" + errno_text() + ")";
  }
  return "";
}

PackedCacheInfo PackedCacheUse::settle() {
  PackedCacheInfo info;
  info.path = final_path_;
  info.source = expected_;
  info.note = note_;
  info.check_seconds = check_seconds_;
  info.check_hashed = check_hashed_;
  if (expected_ == PackedCacheSource::kWritten) {
    const PackedFileCheck written = check_packed_cache_file(backend_path_);
    if (!written.valid || mapped_bytes_of(backend_path_) == 0) {
      info.source = PackedCacheSource::kMemoryOnly;
      info.note = "the backend did not write " + backend_path_ + " (" +
                  (written.valid ? std::string("not mapped") : written.problem) +
                  "), packed in memory";
      ::unlink(backend_path_.c_str());
    } else if (std::string failed = publish_written_file(); !failed.empty()) {
      info.source = PackedCacheSource::kMemoryOnly;
      info.note = failed + "; packed weights not kept for the next start";
      ::unlink(backend_path_.c_str());
    }
  }
  LiveFile live_before;
  if (expected_ == PackedCacheSource::kShared) {
    std::lock_guard<std::mutex> lock(table_mutex());
    auto live = live_files().find(final_path_);
    if (live != live_files().end()) live_before = live->second;
  }
  if (info.source != PackedCacheSource::kMemoryOnly) {
    // A shared file the first Session copied into memory is no longer mapped.
    info.mapped_bytes = mapped_bytes_of(final_path_) + live_before.copied_bytes;
    info.copied_bytes = live_before.copied_bytes;
    if (info.mapped_bytes == 0) {
      info.source = PackedCacheSource::kMemoryOnly;
      info.note = "the backend did not map " + final_path_ +
                  " (another process holds it locked, or it is unreadable), packed in memory";
    } else if (expected_ == PackedCacheSource::kMapped && mtime_ns(final_path_) != mtime_before_ns_) {
      info.source = PackedCacheSource::kWritten;
      info.note = "the backend rewrote " + final_path_ + " in place";
    }
  }
  const PackedFileCheck file = check_packed_cache_file(final_path_);
  info.file_bytes = file.file_bytes;
  info.file_entries = file.entries;
  if (info.source != PackedCacheSource::kMemoryOnly && residency_ == PackedCacheResidency::kCopy) {
    // Whatever of the file is still mapped (all of it, unless a live Session
    // copied it already; a Session that asked kMap leaves it mapped).
    const MemoryCopy copy = copy_file_mappings_to_memory(final_path_);
    info.copied_bytes += copy.bytes;
    info.copy_seconds = copy.seconds;
    if (!copy.problem.empty()) info.note += (info.note.empty() ? "" : "; ") + copy.problem;
  }
  if (info.source != PackedCacheSource::kMemoryOnly) {
    std::lock_guard<std::mutex> lock(table_mutex());
    LiveFile& live = live_files()[final_path_];
    live.backend_path = backend_path_;
    live.copied_bytes = info.copied_bytes;
    ++live.sessions;
    registered_ = true;
  }
  if (open_lock_.owns_lock()) open_lock_.unlock();
  return info;
}

PackedCacheUse::~PackedCacheUse() {
  if (registered_) {
    std::lock_guard<std::mutex> lock(table_mutex());
    auto live = live_files().find(final_path_);
    if (live != live_files().end() && --live->second.sessions <= 0) live_files().erase(live);
  } else if (expected_ == PackedCacheSource::kWritten) {
    ::unlink(backend_path_.c_str());  // a load that failed half way
  }
}

}  // namespace etlora
