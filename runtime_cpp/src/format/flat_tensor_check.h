// Checks a whole FlatTensor (.ptd) file before ExecuTorch's reader sees it.
#pragma once

#include <cstddef>
#include <string>

#include "etlora/status.h"

namespace etlora {

// OK when every offset, count and size in the file's header and flatbuffer
// (segments, named entries, keys, tensor layouts) lies inside `size` bytes and
// each entry's bytes fit its segment. Otherwise an error naming `path`, the
// part that is wrong and the sizes involved. Reads nothing outside [0, size).
// Opaque entries without a tensor layout (XNNPACK's packed blobs in
// foundation.ptd, keyed "[prefix_]<64 hex>") pass only when `layouts_required`
// is false: ExecuTorch's get_tensor_layout dereferences a missing layout, and it
// asks for the layouts of named constants, so every other entry needs one.
Status check_flat_tensor(const void* data, size_t size, const std::string& path,
                         bool layouts_required = true);

// The same for a file on disk, mapped read-only for the check (only the header
// and flatbuffer pages are touched). `what` prefixes the path in messages,
// e.g. "foundation file".
Status check_flat_tensor_file(const std::string& path, const std::string& what,
                              bool layouts_required);

}  // namespace etlora
