// etlora._runtime: the Python face of the C++ runtime (same library, no second
// implementation). Errors become Python exceptions carrying the C++ message:
// ValueError for bad input or incompatible files, MissingFileError (also a
// ValueError) for missing files, RuntimeError for ExecuTorch failures. Each
// part is bound in its own file (binding_util.h lists them).
#include <pybind11/pybind11.h>

#include <etlora/logging.h>
#include <etlora/program_info.h>

#include "binding_util.h"

namespace py = pybind11;
using namespace pybind11::literals;

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "etlora C++ runtime: run an etlora bundle with switchable adapters";
  etlora::install_runtime_log_filter();  // ExecuTorch's info lines only with ETLORA_LOG=info
  etlora_python::missing_file_error() = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyType_Type))(
      "MissingFileError", py::make_tuple(py::handle(PyExc_FileNotFoundError), py::handle(PyExc_ValueError)),
      py::dict("__module__"_a = "etlora._runtime"));
  m.attr("MissingFileError") = etlora_python::missing_file_error();
  m.attr("FORMAT_VERSION") = etlora::kFormatVersion;
  etlora_python::bind_device(m);
  etlora_python::bind_sessions(m);
  etlora_python::bind_loaded_bundle(m);
  etlora_python::bind_text(m);
  etlora_python::bind_chat_commands(m);
}
