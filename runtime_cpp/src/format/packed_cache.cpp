// Naming and checking the packed cache file (include/etlora/packed_cache.h).
#include <etlora/packed_cache.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#ifndef ETLORA_EXECUTORCH_VERSION
#define ETLORA_EXECUTORCH_VERSION "unknown"
#endif

namespace etlora {

namespace {

// The 1.5.1 backend's file: packed weights, then an index of entries
//   [name_len u32][name][file_offset u64][data_size u64][seed u32]
// and a footer at the very end
//   [index_start u64][entry_count u32][magic u32][version u32]
// little-endian. Each save appends a new index and footer; the last one counts.
constexpr size_t kFooterBytes = 20;
constexpr uint32_t kPackedMagic = 0x58505743;  // "XPWC"
constexpr uint32_t kPackedLayoutVersion = 2;
constexpr size_t kEntryFixedBytes = 4 + 8 + 8 + 4;

template <typename T>
T little_endian_at(const uint8_t* bytes) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(bytes[i]) << (8 * i);
  return value;
}

PackedFileCheck problem(PackedFileCheck check, const std::string& path, const std::string& what) {
  check.valid = false;
  check.problem = "packed weight file " + path + ": " + what;
  return check;
}

}  // namespace

const char* executorch_version() { return ETLORA_EXECUTORCH_VERSION; }

std::string machine_signature() {
  // XNNPACK picks its microkernels, and so its packed layouts, by architecture and CPU
  // features; the same executorch release packs differently on an AVX2 and an AVX-512 x86,
  // and on ARM. The kernel's feature list (x86 "flags", ARM "Features") names that choice.
#if defined(__x86_64__)
  const char* arch = "x86_64";
  const char* key = "flags";
#elif defined(__aarch64__)
  const char* arch = "aarch64";
  const char* key = "Features";
#else
  const char* arch = "other";
  const char* key = "flags";
#endif
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, features;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind(key, 0) == 0) {
      features = line.substr(line.find(':') == std::string::npos ? line.size() : line.find(':') + 1);
      break;
    }
  }
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : features) hash = (hash ^ c) * 1099511628211ull;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08llx", static_cast<unsigned long long>(hash & 0xffffffffull));
  return std::string(arch) + "-" + hex;
}

std::string packed_cache_file_name(const std::string& foundation_weights_id) {
  static const std::string machine = machine_signature();
  std::string version = executorch_version();
  for (char& c : version) {
    const bool plain = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
    if (!plain) c = '_';  // "1.5.1+cpu" -> "1.5.1_cpu"
  }
  return "xnnpack-packed-" + foundation_weights_id.substr(0, 32) + "-et" + version + "-" + machine + ".bin";
}

StatusOr<std::string> packed_cache_path(const std::string& bundle_dir, const std::string& cache_dir,
                                        const std::string& foundation_weights_id) {
  const std::string folder = cache_dir.empty() ? bundle_dir + "/.etlora-cache" : cache_dir;
  if (::mkdir(folder.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status(StatusCode::kInvalidArgument,
                  "cannot create " + folder + " (" + std::strerror(errno) + ")");
  }
  if (::access(folder.c_str(), W_OK) != 0) {
    return Status(StatusCode::kInvalidArgument,
                  folder + " is not writable (hint: a cache folder elsewhere)");
  }
  const std::string path = folder + "/" + packed_cache_file_name(foundation_weights_id);
  if (path.size() > kMaxPackedCachePath) {
    return Status(StatusCode::kInvalidArgument,
                  path + " is " + std::to_string(path.size()) + " characters, the runtime takes at most " +
                      std::to_string(kMaxPackedCachePath) + " (hint: a shorter cache folder)");
  }
  return path;
}

PackedFileCheck check_packed_cache_file(const std::string& path) {
  PackedFileCheck check;
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) return problem(check, path, "cannot be read");
  const int64_t size = static_cast<int64_t>(file.tellg());
  check.file_bytes = size;
  if (size < static_cast<int64_t>(kFooterBytes)) {
    return problem(check, path, "expected at least a 20-byte footer, got " + std::to_string(size) +
                                    " bytes (truncated)");
  }
  uint8_t footer[kFooterBytes];
  file.seekg(size - static_cast<int64_t>(kFooterBytes));
  if (!file.read(reinterpret_cast<char*>(footer), kFooterBytes)) {
    return problem(check, path, "footer cannot be read");
  }
  const uint64_t index_start = little_endian_at<uint64_t>(footer);
  const uint32_t entries = little_endian_at<uint32_t>(footer + 8);
  const uint32_t magic = little_endian_at<uint32_t>(footer + 12);
  const uint32_t version = little_endian_at<uint32_t>(footer + 16);
  if (magic != kPackedMagic) {
    return problem(check, path, "expected footer magic XPWC, got another value (truncated, damaged, "
                                "or not an XNNPACK packed weight file)");
  }
  if (version != kPackedLayoutVersion) {
    return problem(check, path, "expected layout version " + std::to_string(kPackedLayoutVersion) +
                                    ", got " + std::to_string(version) +
                                    " (written by another executorch)");
  }
  const uint64_t index_end = static_cast<uint64_t>(size) - kFooterBytes;
  if (index_start >= index_end) {
    return problem(check, path, "index starts at " + std::to_string(index_start) +
                                    ", past the end of the file");
  }
  std::vector<uint8_t> index(index_end - index_start);
  file.seekg(static_cast<std::streamoff>(index_start));
  if (!file.read(reinterpret_cast<char*>(index.data()), static_cast<std::streamsize>(index.size()))) {
    return problem(check, path, "index cannot be read");
  }
  size_t at = 0;
  for (uint32_t i = 0; i < entries; ++i) {
    if (at + 4 > index.size()) {
      return problem(check, path, "index holds " + std::to_string(i) + " entries, footer says " +
                                      std::to_string(entries) + " (truncated)");
    }
    const uint32_t name_len = little_endian_at<uint32_t>(&index[at]);
    if (at + name_len + kEntryFixedBytes > index.size()) {
      return problem(check, path, "entry " + std::to_string(i) + " runs past the index (truncated)");
    }
    at += 4 + name_len;
    const uint64_t offset = little_endian_at<uint64_t>(&index[at]);
    const uint64_t bytes = little_endian_at<uint64_t>(&index[at + 8]);
    at += kEntryFixedBytes - 4;
    if (offset >= index_start || bytes > index_start - offset) {
      return problem(check, path, "entry " + std::to_string(i) + " points outside the packed data");
    }
  }
  check.valid = true;
  check.entries = entries;
  return check;
}

std::string packed_cache_sum_path(const std::string& packed_path) { return packed_path + ".sum"; }

namespace {

// "<device> <inode> <mtime ns>": changes whenever the file is written through
// the file system, replaced or copied.
std::string file_identity(const struct stat& st) {
  const long long mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return std::to_string(static_cast<unsigned long long>(st.st_dev)) + " " +
         std::to_string(static_cast<unsigned long long>(st.st_ino)) + " " + std::to_string(mtime_ns);
}

// "<bytes> <16 hex>" of the file's content, or "" when unreadable.
std::string content_hash(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "";
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size <= 0) {
    ::close(fd);
    return "";
  }
  const size_t size = static_cast<size_t>(st.st_size);
  // Populated at once: cheaper than a page fault per 64 KiB, and the backend
  // maps the same pages right after.
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return "";
  // Four lanes of multiply-rotate over 8-byte words, then the tail bytes.
  const auto* bytes = static_cast<const uint8_t*>(map);
  constexpr uint64_t kPrime = 0x9E3779B97F4A7C15ull;
  uint64_t lanes[4] = {1, 2, 3, 4};
  const size_t words = size / 8;
  size_t w = 0;
  for (; w + 4 <= words; w += 4) {
    for (int l = 0; l < 4; ++l) {
      uint64_t v;
      std::memcpy(&v, bytes + 8 * (w + l), 8);
      lanes[l] = ((lanes[l] ^ v) * kPrime);
      lanes[l] = (lanes[l] << 31) | (lanes[l] >> 33);
    }
  }
  uint64_t hash = size;
  for (uint64_t lane : lanes) hash = ((hash ^ lane) * kPrime) ^ (hash >> 29);
  for (size_t i = 8 * w; i < size; ++i) hash = ((hash ^ bytes[i]) * kPrime) ^ (hash >> 29);
  ::munmap(map, size);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return std::to_string(size) + " " + hex;
}

constexpr char kSumMagic[] = "etlora-packed-sum 1 ";

}  // namespace

std::string packed_cache_sum_line(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  const std::string hash = content_hash(path);
  if (hash.empty()) return "";
  return kSumMagic + hash + " " + file_identity(st) + "\n";
}

PackedSumCheck check_packed_cache_sum(const std::string& packed_path) {
  const std::string sum_path = packed_cache_sum_path(packed_path);
  std::ifstream file(sum_path);
  if (!file) {
    return {"checksum file " + sum_path + " missing (the file was not written by etlora, or its "
            "writer stopped half way)", false};
  }
  std::string recorded;
  std::getline(file, recorded);
  const size_t magic = sizeof(kSumMagic) - 1;
  std::istringstream fields(recorded.compare(0, magic, kSumMagic) == 0 ? recorded.substr(magic) : "");
  std::string bytes, hash, device, inode, mtime;
  if (!(fields >> bytes >> hash >> device >> inode >> mtime)) {
    return {"checksum file " + sum_path + ": expected 'etlora-packed-sum 1 <bytes> <hash> <device> "
            "<inode> <mtime>', got '" + recorded.substr(0, 80) + "'", false};
  }
  struct stat st {};
  if (::stat(packed_path.c_str(), &st) != 0) return {"packed weight file " + packed_path + " vanished", false};
  if (std::to_string(st.st_size) == bytes && file_identity(st) == device + " " + inode + " " + mtime) {
    return {"", false};  // the very file that was hashed, untouched since
  }
  const std::string actual = content_hash(packed_path);
  if (actual == bytes + " " + hash) return {"", true};
  return {"packed weight file " + packed_path + ": checksum expected '" + bytes + " " + hash +
              "' (from " + sum_path + "), got '" + actual + "' (damaged or replaced)",
          true};
}

const char* packed_cache_source_name(PackedCacheSource source) {
  switch (source) {
    case PackedCacheSource::kOff:
      return "off";
    case PackedCacheSource::kMapped:
      return "mapped";
    case PackedCacheSource::kWritten:
      return "written";
    case PackedCacheSource::kShared:
      return "shared";
    case PackedCacheSource::kMemoryOnly:
      return "memory-only";
  }
  return "?";
}

namespace {

struct Mapping {
  uintptr_t start = 0;
  uintptr_t end = 0;
  int protection = PROT_NONE;
};

// This process's mappings of `path`'s file, matched by device and inode.
std::vector<Mapping> file_mappings(const std::string& path) {
  std::vector<Mapping> mappings;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return mappings;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  // "start-end perms offset major:minor inode path"
  while (std::getline(maps, line)) {
    std::istringstream fields(line);
    std::string range, perms, offset, device;
    unsigned long long inode = 0;
    if (!(fields >> range >> perms >> offset >> device >> inode) || inode != st.st_ino) continue;
    unsigned major_id = 0, minor_id = 0;
    if (std::sscanf(device.c_str(), "%x:%x", &major_id, &minor_id) != 2) continue;
    if (major_id != major(st.st_dev) || minor_id != minor(st.st_dev)) continue;
    unsigned long long start = 0, end = 0;
    if (std::sscanf(range.c_str(), "%llx-%llx", &start, &end) != 2 || perms.size() < 3) continue;
    Mapping mapping;
    mapping.start = static_cast<uintptr_t>(start);
    mapping.end = static_cast<uintptr_t>(end);
    mapping.protection = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
                         (perms[2] == 'x' ? PROT_EXEC : 0);
    mappings.push_back(mapping);
  }
  return mappings;
}

}  // namespace

int64_t mapped_bytes_of(const std::string& path) {
  int64_t total = 0;
  for (const Mapping& mapping : file_mappings(path)) total += mapping.end - mapping.start;
  return total;
}

MemoryCopy copy_file_mappings_to_memory(const std::string& path) {
  MemoryCopy copy;
  const auto start_time = std::chrono::steady_clock::now();
  for (const Mapping& mapping : file_mappings(path)) {
    const size_t bytes = mapping.end - mapping.start;
    void* const at = reinterpret_cast<void*>(mapping.start);
    // Populated up front: one call instead of a page fault per 4 KiB page.
    void* fresh = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (fresh == MAP_FAILED) {
      copy.problem = "could not allocate " + std::to_string(bytes) + " bytes for a copy of " + path +
                     " (" + std::strerror(errno) + "), left mapped";
      break;
    }
    std::memcpy(fresh, at, bytes);
    // Same protection, then moved over the file mapping in one step: a thread
    // reading the weights meanwhile sees either the file's bytes or the copy.
    if (::mprotect(fresh, bytes, mapping.protection) != 0 ||
        ::mremap(fresh, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED) {
      copy.problem = "could not move a copy of " + path + " over its mapping (" +
                     std::strerror(errno) + "), left mapped";
      ::munmap(fresh, bytes);
      break;
    }
    copy.bytes += static_cast<int64_t>(bytes);
  }
  copy.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return copy;
}

}  // namespace etlora
