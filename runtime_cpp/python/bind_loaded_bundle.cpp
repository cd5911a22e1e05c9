// etlora._runtime.Bundle (the manifest as the runtime reads it) and
// .LoadedBundle (the opened bundle every front end runs: etlora.load, etlora_runner).
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include <etlora/bundle.h>
#include <etlora/loaded_bundle.h>

#include "binding_util.h"

namespace etlora_python {

namespace {

using namespace pybind11::literals;

// A LoadedBundle: adapters by name.
class PyLoadedBundle : public PyRunning<etlora::LoadedBundle, etlora::NamedAdapter> {
 public:
  PyLoadedBundle(const std::string& dir, const std::string& backend, const py::object& decided, bool weight_cache,
                 bool packed_cache, const std::string& packed_cache_dir, const std::string& packed_cache_residency,
                 size_t max_resident_adapters, uint64_t max_resident_adapter_bytes) {
    etlora::LoadOptions options;
    auto request = etlora::parse_backend_request(backend);
    if (!request.ok()) raise_status(request.status());
    options.backend = *request;
    if (!decided.is_none()) {  // (backend, reason): a decision the caller made with choose_backend
      const auto [name, reason] = decided.cast<std::tuple<std::string, std::string>>();
      if (name != "xnnpack" && name != "htp") {
        throw py::value_error("decided: expected backend 'xnnpack' or 'htp', received '" + name + "'");
      }
      options.decided = etlora::BackendChoice{name == "htp" ? etlora::Backend::kHtp : etlora::Backend::kXnnpack,
                                              reason};
    }
    options.weight_cache = weight_cache;
    options.packed_cache = packed_cache;
    options.packed_cache_dir = packed_cache_dir;
    options.packed_cache_residency = to_residency(packed_cache_residency);
    options.max_resident_adapters = max_resident_adapters;
    options.max_resident_adapter_bytes = max_resident_adapter_bytes;
    open([&] { return etlora::LoadedBundle::open(dir, options); });
  }

  std::shared_ptr<etlora::Tokenizer> tokenizer() {
    std::lock_guard<std::mutex> lock(mutex_);
    auto tokenizer = session_->tokenizer();
    if (!tokenizer.ok()) raise_status(tokenizer.status());
    return *tokenizer;
  }
};

}  // namespace

void bind_loaded_bundle(py::module_& m) {
  py::class_<etlora::Bundle>(m, "Bundle")
      .def(py::init([](const std::string& dir) {
             auto bundle = etlora::Bundle::open(dir);
             if (!bundle.ok()) raise_status(bundle.status());
             return *bundle;
           }),
           py::arg("dir"), "Read and check dir/manifest.json, as etlora_runner does (etlora::Bundle::open).")
      .def_static("parse", [](const std::string& text, const std::string& dir) {
             auto bundle = etlora::Bundle::parse(text, dir);
             if (!bundle.ok()) raise_status(bundle.status());
             return *bundle;
           }, py::arg("manifest_text"), py::arg("dir"), "The same checks on manifest text; files are not looked at.")
      .def_property_readonly("format_version", &etlora::Bundle::format_version)
      .def_property_readonly("program_path", &etlora::Bundle::program_path)
      .def_property_readonly("foundation_path", &etlora::Bundle::foundation_path)
      .def_property_readonly("tokenizer_path", &etlora::Bundle::tokenizer_path)
      .def_property_readonly("foundation_fingerprint", &etlora::Bundle::foundation_fingerprint)
      .def_property_readonly("foundation_weights_id", &etlora::Bundle::foundation_weights_id)
      .def_property_readonly("quantization_scheme", &etlora::Bundle::quantization_scheme)
      .def_property_readonly("htp_program", [](const etlora::Bundle& b) -> py::object {
        if (!b.htp_program()) return py::none();
        const etlora::HtpProgram& p = *b.htp_program();
        return py::dict(py::arg("file") = p.file, py::arg("path") = p.path, py::arg("soc") = p.soc,
                        py::arg("qnn_sdk_version") = p.qnn_sdk_version, py::arg("chunk_len") = p.chunk_len,
                        py::arg("cache_len") = p.cache_len,
                        py::arg("foundation_in_context_bytes") = p.foundation_in_context_bytes);
      }, "The HTP program entry (etlora::Bundle::htp_program) as a dict, or None when the bundle has none.")
      .def_property_readonly("adapters", [](const etlora::Bundle& b) {
        py::dict adapters;
        for (const auto& a : b.adapters()) {
          adapters[py::str(a.name)] = py::dict(py::arg("file") = a.file, py::arg("dtype") = a.dtype,
                                               py::arg("rank") = a.rank);
        }
        return adapters;
      })
      .def("adapter_path", [](const etlora::Bundle& b, const std::string& name) {
        auto path = b.adapter_path(name);
        if (!path.ok()) raise_status(path.status());
        return *path;
      }, py::arg("name"));

  using Py = PyLoadedBundle;
  py::class_<Py> loaded(m, "LoadedBundle");
  loaded.def(py::init<const std::string&, const std::string&, const py::object&, bool, bool, const std::string&,
                    const std::string&, size_t, uint64_t>(),
           py::arg("dir"), py::kw_only(), py::arg("backend") = "auto", py::arg("decided") = py::none(),
           py::arg("weight_cache") = true, py::arg("packed_cache") = true, py::arg("packed_cache_dir") = "",
           py::arg("packed_cache_residency") = "copy", py::arg("max_resident_adapters") = 0,
           py::arg("max_resident_adapter_bytes") = 0,
           "Open a bundle (etlora::LoadedBundle::open): the backend chosen ('auto' | 'xnnpack' | 'htp', or "
           "decided=(backend, reason) already), files checked against the manifest, the program opened, its "
           "foundation fingerprint checked. packed_cache_dir '' = <bundle>/.etlora-cache.");
  def_run_calls(loaded, "Activate [(name, strength), ...] in slot order by bundle name; [] turns adapters off.");
  loaded.def_property_readonly("tokenizer", &Py::tokenizer,
                             "The bundle's tokenizer, checked against the program's vocabulary.")
      .def_property_readonly("resident_adapters", [](const Py& s) { return s.session().resident_adapters(); },
                             "Names of the adapters whose files are open, most recently bound first.")
      .def_property_readonly("resident_adapter_bytes",
                             [](const Py& s) { return s.session().resident_adapter_bytes(); })
      .def_property_readonly("backend",
                             [](const Py& s) { return std::string(etlora::backend_name(s.session().backend().backend)); })
      .def_property_readonly("backend_reason", [](const Py& s) { return s.session().backend().reason; })
      .def_property_readonly("packed_cache",
                             [](const Py& s) {
                               const etlora::Session* session = s.session().session();
                               return packed_cache_dict(session ? session->packed_cache() : etlora::PackedCacheInfo{});
                             })
      .def_property_readonly("packed_cache_warning", [](const Py& s) { return s.session().packed_cache_warning(); })
      .def_property_readonly("program_path", [](const Py& s) { return s.session().program_path(); })
      .def_property_readonly("vocab_size", [](const Py& s) { return s.session().info().vocab_size; })
      .def_property_readonly("max_seq_len", [](const Py& s) { return s.session().info().max_seq_len; })
      .def_property_readonly("adapter_slots", [](const Py& s) { return s.session().info().adapter_slots; })
      .def_property_readonly("foundation_fingerprint",
                             [](const Py& s) { return s.session().info().foundation_fingerprint; })
      .def_property_readonly("active_adapters", [](const Py& s) {
        std::vector<std::tuple<std::string, float>> active;
        for (const auto& a : s.session().active_adapters()) active.emplace_back(a.name, a.strength);
        return active;
      });
}

}  // namespace etlora_python
