// Bounds before trust for FlatTensor (.ptd) files (flat_tensor_check.h).
//
// ExecuTorch's FlatTensorDataMap reads offsets out of the flatbuffer without a
// verifier (the wheel ships no flatbuffers headers to run one), so a damaged
// file can send it to read a string or a table anywhere. This walks every part
// of the schema etlora reads (extension/flat_tensor/serialize/flat_tensor.fbs)
// and checks each offset, length and count against the bytes that hold it.
#include "format/flat_tensor_check.h"

#include "format/format_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace etlora {
namespace {

constexpr size_t kHeaderOffset = 8;    // FlatTensorHeader follows root offset and identifier
constexpr size_t kHeaderMinLength = 40;
constexpr uint32_t kMaxDims = 16;
constexpr uint32_t kMaxEntries = 1u << 20;

template <typename T>
T read_at(const uint8_t* data, size_t at) {
  T value;
  std::memcpy(&value, data + at, sizeof(T));  // unaligned-safe; flatbuffers are little-endian
  return value;
}

// One walk over a buffer: every read is checked against `size` first.
class Walker {
 public:
  Walker(const uint8_t* data, size_t size, std::string* error)
      : data_(data), size_(size), error_(error) {}

  bool fits(size_t at, size_t bytes) const { return at <= size_ && bytes <= size_ - at; }

  bool fail(const std::string& what) {
    if (error_->empty()) *error_ = what;
    return false;
  }

  // The table at `at`: its vtable and field slots, in bounds.
  bool table(size_t at, const char* what) {
    if (!fits(at, 4)) return fail(std::string(what) + ": table offset " + std::to_string(at) + " is outside the flatbuffer");
    const int64_t vtable = static_cast<int64_t>(at) - read_at<int32_t>(data_, at);
    if (vtable < 0 || !fits(static_cast<size_t>(vtable), 4)) return fail(std::string(what) + ": vtable outside the flatbuffer");
    const uint16_t vtable_size = read_at<uint16_t>(data_, vtable);
    const uint16_t table_size = read_at<uint16_t>(data_, vtable + 2);
    if (vtable_size < 4 || vtable_size % 2 || !fits(static_cast<size_t>(vtable), vtable_size) ||
        table_size < 4 || !fits(at, table_size)) {
      return fail(std::string(what) + ": vtable or table size out of bounds");
    }
    // Every field a vtable declares must lie inside its table, read or not:
    // ExecuTorch's generated accessors read fields this walk does not need
    // (FlatTensor.version) without a verifier.
    for (size_t slot = 4; slot + 2 <= vtable_size; slot += 2) {
      const uint16_t offset = read_at<uint16_t>(data_, static_cast<size_t>(vtable) + slot);
      if (offset != 0 && (offset < 4 || offset >= table_size)) {
        return fail(std::string(what) + ": field " + std::to_string((slot - 4) / 2) + " at offset " +
                    std::to_string(offset) + " lies outside its table of " + std::to_string(table_size) +
                    " bytes");
      }
    }
    table_ = at;
    vtable_ = static_cast<size_t>(vtable);
    vtable_size_ = vtable_size;
    table_size_ = table_size;
    return true;
  }

  // Offset of field `index` in the current table, 0 when absent; -1 when it does not fit.
  int64_t field(int index, size_t width) {
    const size_t slot = 4 + 2 * static_cast<size_t>(index);
    if (slot + 2 > vtable_size_) return 0;
    const uint16_t offset = read_at<uint16_t>(data_, vtable_ + slot);
    if (offset == 0) return 0;
    if (offset + width > table_size_) return -1;
    return static_cast<int64_t>(table_ + offset);
  }

  // Follows the uoffset at `at`; the target must leave room for `bytes`.
  bool follow(size_t at, size_t bytes, size_t& target, const std::string& what) {
    if (!fits(at, 4)) return fail(what + ": offset slot outside the flatbuffer");
    target = at + read_at<uint32_t>(data_, at);
    if (!fits(target, bytes)) return fail(what + ": points outside the flatbuffer");
    return true;
  }

  // A vector of `element` bytes: its count and elements in bounds.
  bool vector(size_t at, size_t element, uint32_t max_count, size_t& first, uint32_t& count,
              const std::string& what) {
    size_t start = 0;
    if (!follow(at, 4, start, what)) return false;
    count = read_at<uint32_t>(data_, start);
    if (count > max_count) return fail(what + ": " + std::to_string(count) + " entries, more than " + std::to_string(max_count));
    first = start + 4;
    if (!fits(first, static_cast<size_t>(count) * element)) return fail(what + ": " + std::to_string(count) + " entries run past the flatbuffer");
    return true;
  }

  bool string(size_t at, std::string& text, const std::string& what) {
    size_t first = 0;
    uint32_t length = 0;
    if (!vector(at, 1, 1u << 16, first, length, what)) return false;
    if (!fits(first, static_cast<size_t>(length) + 1) || data_[first + length] != 0) {
      return fail(what + ": string of " + std::to_string(length) + " bytes is not NUL-terminated in bounds");
    }
    text.assign(reinterpret_cast<const char*>(data_ + first), length);
    return true;
  }

  const uint8_t* data() const { return data_; }

 private:
  const uint8_t* data_;
  size_t size_;
  std::string* error_;
  size_t table_ = 0, vtable_ = 0, vtable_size_ = 0, table_size_ = 0;
};

// Bytes per element of the scalar types a .ptd etlora reads may hold; 0 = refused.
size_t element_size(int8_t scalar_type) {
  switch (scalar_type) {
    case 0: case 1: case 11: case 12: case 13: return 1;  // byte, char, bool, qint8, quint8
    case 2: case 5: case 15: return 2;                     // short, half, bfloat16
    case 3: case 6: case 14: return 4;                     // int, float, qint32
    case 4: case 7: return 8;                              // long, double
    default: return 0;
  }
}

// XNNPACK's named data: "<64 hex>" (content hash) with an optional "[a-z_]*" prefix ("scale_").
bool is_blob_key(const std::string& key) {
  if (key.size() < 64) return false;
  const size_t prefix = key.size() - 64;
  for (size_t i = 0; i < key.size(); ++i) {
    const char c = key[i];
    const bool ok = i < prefix ? ((c >= 'a' && c <= 'z') || c == '_')
                               : ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
    if (!ok) return false;
  }
  return true;
}

}  // namespace

Status check_flat_tensor(const void* bytes, size_t size, const std::string& path,
                         bool layouts_required) {
  const auto* data = static_cast<const uint8_t*>(bytes);
  auto refuse = [&](const std::string& why) {
    return Status(StatusCode::kInvalidArgument,
                  path + ": not a valid FlatTensor (.ptd) file: " + why +
                      " (file of " + std::to_string(size) + " bytes); hint: truncated or damaged, re-export it");
  };
  if (size < kHeaderOffset + kHeaderMinLength || std::memcmp(data + 4, "FT01", 4) != 0) {
    return refuse("expected the identifier FT01 at byte 4 and a 40-byte header");
  }
  if (std::memcmp(data + kHeaderOffset, "FH01", 4) != 0) return refuse("expected the header magic FH01 at byte 8");
  const uint32_t header_length = read_at<uint32_t>(data, kHeaderOffset + 4);
  const uint64_t flatbuffer_offset = read_at<uint64_t>(data, kHeaderOffset + 8);
  const uint64_t flatbuffer_size = read_at<uint64_t>(data, kHeaderOffset + 16);
  const uint64_t segment_base = read_at<uint64_t>(data, kHeaderOffset + 24);
  const uint64_t segment_bytes = read_at<uint64_t>(data, kHeaderOffset + 32);
  if (header_length < kHeaderMinLength || flatbuffer_offset > size || flatbuffer_size > size - flatbuffer_offset ||
      segment_base > size || segment_bytes > size - segment_base) {
    return refuse("header regions (flatbuffer " + std::to_string(flatbuffer_offset) + "+" +
                  std::to_string(flatbuffer_size) + ", segments " + std::to_string(segment_base) + "+" +
                  std::to_string(segment_bytes) + ") do not fit the file");
  }

  std::string error;
  Walker walk(data, static_cast<size_t>(flatbuffer_offset + flatbuffer_size), &error);
  size_t root = 0;
  if (!walk.follow(0, 4, root, "root") || !walk.table(root, "FlatTensor")) return refuse(error);
  const int64_t version_field = walk.field(0, 4);
  const int64_t segments_field = walk.field(1, 4), named_field = walk.field(2, 4);
  if (version_field < 0 || segments_field < 0 || named_field < 0) {
    return refuse("FlatTensor fields run past their table");
  }
  // ExecuTorch's reader dereferences these without a null check: absent is refused, not defaulted.
  if (segments_field == 0 || named_field == 0) return refuse("FlatTensor has no segments or no named_data");

  // Segments: (offset, size) inside the segment data.
  std::vector<std::pair<uint64_t, uint64_t>> segments;
  if (segments_field > 0) {
    size_t first = 0;
    uint32_t count = 0;
    if (!walk.vector(segments_field, 4, kMaxEntries, first, count, "segments")) return refuse(error);
    for (uint32_t i = 0; i < count; ++i) {
      const std::string what = "segments[" + std::to_string(i) + "]";
      size_t table = 0;
      if (!walk.follow(first + 4 * size_t{i}, 4, table, what) || !walk.table(table, what.c_str())) return refuse(error);
      const int64_t offset_at = walk.field(0, 8), size_at = walk.field(1, 8);
      if (offset_at < 0 || size_at < 0) return refuse(what + ": fields run past its table");
      const uint64_t offset = offset_at ? read_at<uint64_t>(data, offset_at) : 0;
      const uint64_t length = size_at ? read_at<uint64_t>(data, size_at) : 0;
      if (offset > segment_bytes || length > segment_bytes - offset) {
        return refuse(what + " (" + std::to_string(offset) + "+" + std::to_string(length) +
                      ") lies outside the " + std::to_string(segment_bytes) + " bytes of segment data");
      }
      segments.emplace_back(offset, length);
    }
  }

  // Named entries: key, segment index, and a layout whose bytes fit the segment.
  if (named_field > 0) {
    size_t first = 0;
    uint32_t count = 0;
    if (!walk.vector(named_field, 4, kMaxEntries, first, count, "named_data")) return refuse(error);
    for (uint32_t i = 0; i < count; ++i) {
      std::string what = "named_data[" + std::to_string(i) + "]";
      size_t table = 0;
      if (!walk.follow(first + 4 * size_t{i}, 4, table, what) || !walk.table(table, what.c_str())) return refuse(error);
      const int64_t key_at = walk.field(0, 4), index_at = walk.field(1, 4), layout_at = walk.field(2, 4);
      if (key_at <= 0 || index_at < 0 || layout_at < 0 || (layout_at == 0 && layouts_required)) {
        return refuse(what + ": key or tensor layout missing");
      }
      const uint32_t segment_index = index_at ? read_at<uint32_t>(data, index_at) : 0;
      std::string key;
      if (!walk.string(key_at, key, what + ".key")) return refuse(error);
      what = "entry '" + printable(key) + "'";
      if (segment_index >= segments.size()) {
        return refuse(what + ": segment " + std::to_string(segment_index) + " of " + std::to_string(segments.size()));
      }
      if (layout_at == 0) {
        // An opaque blob. ExecuTorch asks for layouts of the program's named
        // constants, so only blob-shaped keys may lack one.
        if (!is_blob_key(key)) {
          return refuse(what + ": no tensor layout, which only XNNPACK blobs ('[prefix_]<64 hex>') may lack");
        }
        continue;
      }
      size_t layout = 0;
      if (!walk.follow(layout_at, 4, layout, what) || !walk.table(layout, what.c_str())) return refuse(error);
      const int64_t type_at = walk.field(0, 1), sizes_at = walk.field(1, 4), order_at = walk.field(2, 4);
      if (type_at < 0 || sizes_at < 0 || order_at < 0) return refuse(what + ": layout fields run past its table");
      if (sizes_at == 0 || order_at == 0) return refuse(what + ": tensor layout without sizes or dim_order");
      const int8_t scalar_type = type_at ? read_at<int8_t>(data, type_at) : 0;
      const size_t element = element_size(scalar_type);
      if (element == 0) return refuse(what + ": scalar type " + std::to_string(scalar_type) + " is not one etlora reads");
      uint64_t numel = 1;
      uint32_t dims = 0, order_count = 0;
      if (sizes_at > 0) {
        size_t sizes_first = 0;
        if (!walk.vector(sizes_at, 4, kMaxDims, sizes_first, dims, what + " sizes")) return refuse(error);
        for (uint32_t d = 0; d < dims; ++d) {
          const int32_t extent = read_at<int32_t>(data, sizes_first + 4 * size_t{d});
          if (extent < 0) return refuse(what + ": negative size " + std::to_string(extent));
          if (extent != 0 && numel > segment_bytes / static_cast<uint64_t>(extent)) {
            return refuse(what + ": needs more than " + std::to_string(segment_bytes) +
                          " bytes, its segment holds " + std::to_string(segments[segment_index].second));
          }
          numel *= static_cast<uint64_t>(extent);
        }
      }
      if (order_at > 0) {
        size_t order_first = 0;
        if (!walk.vector(order_at, 1, kMaxDims, order_first, order_count, what + " dim_order")) return refuse(error);
        if (order_count != dims) return refuse(what + ": dim_order has " + std::to_string(order_count) + " entries for " + std::to_string(dims) + " sizes");
        for (uint32_t d = 0; d < order_count; ++d) {
          if (data[order_first + d] >= dims) return refuse(what + ": dim_order entry out of range");
        }
      }
      const uint64_t needed = numel * element;
      if (needed > segments[segment_index].second) {
        return refuse(what + ": needs " + std::to_string(needed) + " bytes, its segment holds " +
                      std::to_string(segments[segment_index].second));
      }
    }
  }
  return Status::ok_status();
}

Status check_flat_tensor_file(const std::string& path, const std::string& what,
                              bool layouts_required) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status(StatusCode::kNotFound,
                  what + " " + path + " could not be opened (" + std::strerror(errno) + ")");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(StatusCode::kInvalidArgument, what + " " + path + ": expected a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return check_flat_tensor("", 0, what + " " + path, layouts_required);
  }
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED) {
    return Status(StatusCode::kRuntimeError,
                  what + " " + path + " could not be memory-mapped (" + std::strerror(errno) + ")");
  }
  Status checked = check_flat_tensor(mapped, size, what + " " + path, layouts_required);
  ::munmap(mapped, size);
  return checked;
}

}  // namespace etlora
