// Shared helpers of etlora._runtime (binding_util.h).
#include "binding_util.h"

#include <algorithm>

namespace etlora_python {

using namespace pybind11::literals;

py::object& missing_file_error() {
  static py::object type;  // set once at import, lives as long as the module
  return type;
}

void raise_status(const etlora::Status& status) {
  PyObject* type = PyExc_RuntimeError;
  switch (status.code()) {
    case etlora::StatusCode::kNotFound:
      type = missing_file_error().ptr();
      break;
    case etlora::StatusCode::kInvalidArgument:
    case etlora::StatusCode::kIncompatible:
      type = PyExc_ValueError;
      break;
    default:
      break;
  }
  PyErr_SetString(type, status.message().c_str());
  throw py::error_already_set();
}

std::vector<int64_t> to_tokens(const py::object& tokens) {
  if (py::isinstance<py::array>(tokens)) {
    auto array = py::reinterpret_borrow<py::array>(tokens);
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u') {
      throw py::value_error("tokens: expected an integer array, got dtype " + std::string(py::str(array.dtype())));
    }
    if (array.ndim() > 2 || (array.ndim() == 2 && array.shape(0) != 1)) {
      throw py::value_error("tokens: expected shape [T] or [1, T], got " +
                            std::string(py::str(py::tuple(tokens.attr("shape")))));
    }
  }
  auto flat = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(tokens);
  if (!flat) throw py::value_error("tokens: expected a list of ints or an int64 array");
  return std::vector<int64_t>(flat.data(), flat.data() + flat.size());
}

py::array_t<float> to_array(std::vector<float>&& values) {
  py::array_t<float> array(values.size());
  std::copy(values.begin(), values.end(), array.mutable_data());
  return array;
}

py::str to_text(const std::string& bytes) {
  return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(bytes.data(), bytes.size(), "replace"));
}

py::dict stats_dict(const etlora::GenerationStats& stats) {
  return py::dict("prompt_tokens"_a = stats.prompt_tokens, "reused_tokens"_a = stats.reused_tokens,
                  "generated_tokens"_a = stats.generated_tokens, "decode_steps"_a = stats.decode_steps,
                  "prefill_seconds"_a = stats.prefill_seconds, "decode_seconds"_a = stats.decode_seconds,
                  "prefill_tokens_per_second"_a = stats.prefill_tokens_per_second(),
                  "decode_tokens_per_second"_a = stats.decode_tokens_per_second(),
                  "stop_reason"_a = stats.stop_reason);
}

etlora::PackedCacheResidency to_residency(const std::string& name) {
  if (name == "map") return etlora::PackedCacheResidency::kMap;
  if (name != "copy") throw py::value_error("packed_cache_residency: expected 'copy' or 'map', got '" + name + "'");
  return etlora::PackedCacheResidency::kCopy;
}

py::dict packed_cache_dict(const etlora::PackedCacheInfo& info) {
  return py::dict("path"_a = info.path, "source"_a = etlora::packed_cache_source_name(info.source),
                  "file_bytes"_a = info.file_bytes, "file_entries"_a = info.file_entries,
                  "mapped_bytes"_a = info.mapped_bytes, "copied_bytes"_a = info.copied_bytes,
                  "copy_seconds"_a = info.copy_seconds, "load_seconds"_a = info.load_seconds,
                  "check_seconds"_a = info.check_seconds, "check_hashed"_a = info.check_hashed,
                  "note"_a = info.note);
}

}  // namespace etlora_python
