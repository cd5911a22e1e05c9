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
Status check_flat_tensor(const void* data, size_t size, const std::string& path);

}  // namespace etlora
