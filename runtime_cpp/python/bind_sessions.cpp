// etlora._runtime.Session and .HtpSession: one program loaded from files, with
// the calls both share bound once (def_running) and each one's own after.
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include <etlora/htp_session.h>
#include <etlora/session.h>

#include "binding_util.h"

namespace etlora_python {

namespace {

using namespace pybind11::literals;

class PySession : public PyRunning<etlora::Session, etlora::AdapterChoice> {
 public:
  PySession(const std::string& program_path, const std::string& foundation_path, bool weight_cache,
            const std::string& packed_cache_path, const std::string& packed_cache_residency,
            size_t max_resident_adapters, uint64_t max_resident_adapter_bytes) {
    etlora::SessionOptions options;
    options.weight_cache = weight_cache;
    options.max_resident_adapters = max_resident_adapters;
    options.max_resident_adapter_bytes = max_resident_adapter_bytes;
    options.packed_cache_path = packed_cache_path;
    options.packed_cache_residency = to_residency(packed_cache_residency);
    open([&] { return etlora::Session::open(program_path, foundation_path, options); });
  }
};

// An HtpSession: the HTP-shaped program with its KV cache on the host.
class PyHtpSession : public PyRunning<etlora::HtpSession, etlora::AdapterChoice> {
 public:
  PyHtpSession(const std::string& program_path, const std::string& foundation_path, size_t max_resident_adapters,
               uint64_t max_resident_adapter_bytes) {
    const etlora::HtpSessionOptions options{max_resident_adapters, max_resident_adapter_bytes};
    open([&] { return etlora::HtpSession::open(program_path, foundation_path, options); });
  }
};

// What Session and HtpSession both offer, bound once for each.
template <class Py>
void def_running(py::class_<Py>& cls) {
  def_run_calls(cls, "Activate [(adapter.ptd, strength), ...] in slot order; [] turns adapters off.");
  cls.def_property_readonly(
          "resident_adapters", [](const Py& s) { return s.session().resident_adapter_paths(); },
          "Adapter files held open (checked, mapped), most recently bound first.")
      .def_property_readonly(
          "resident_adapter_bytes", [](const Py& s) { return s.session().resident_adapter_bytes(); },
          "The open adapter files' sizes together (what max_resident_adapter_bytes bounds).")
      .def_property_readonly("sites", [](const Py& s) { return s.session().info().sites; })
      .def_property_readonly("site_shapes", [](const Py& s) { return s.session().info().site_shapes; })
      .def_property_readonly("max_rank", [](const Py& s) { return s.session().info().max_rank; })
      .def_property_readonly("adapter_slots", [](const Py& s) { return s.session().info().adapter_slots; })
      .def_property_readonly("max_seq_len", [](const Py& s) { return s.session().info().max_seq_len; })
      .def_property_readonly("vocab_size", [](const Py& s) { return s.session().info().vocab_size; })
      .def_property_readonly("format_version", [](const Py& s) { return s.session().info().format_version; })
      .def_property_readonly("foundation_fingerprint",
                             [](const Py& s) { return s.session().info().foundation_fingerprint; })
      .def_property_readonly("active_adapters", [](const Py& s) {
        std::vector<std::tuple<std::string, float>> active;
        for (const auto& a : s.session().active_adapters()) active.emplace_back(a.path, a.strength);
        return active;
      });
}

}  // namespace

void bind_sessions(py::module_& m) {
  py::class_<PySession> session(m, "Session");
  session
      .def(py::init<const std::string&, const std::string&, bool, const std::string&, const std::string&, size_t,
                    uint64_t>(),
           py::arg("program_path"), py::arg("foundation_path"), py::kw_only(), py::arg("weight_cache") = true,
           py::arg("packed_cache_path") = "", py::arg("packed_cache_residency") = "copy",
           py::arg("max_resident_adapters") = 0, py::arg("max_resident_adapter_bytes") = 0,
           "Load model.pte with foundation.ptd (memory-mapped); no adapter active. weight_cache: "
           "share packed foundation weights with other Sessions (XNNPACK weight cache). "
           "packed_cache_path: the packed cache file (name from packed_cache_file_name), "
           "written at the first start and mapped at later ones; '' = off. packed_cache_residency: "
           "'copy' moves the packed weights into private memory after the load, 'map' keeps the "
           "file mapped. max_resident_adapters: adapter files kept open for a fast switch back "
           "(least recently bound closed first); 0 = no limit. max_resident_adapter_bytes: the "
           "same for their file sizes together (bound adapters always stay); 0 = no limit.")
      .def_property_readonly("weight_cache", [](const PySession& s) { return s.session().weight_cache(); })
      .def_property_readonly(
          "packed_cache", [](const PySession& s) { return packed_cache_dict(s.session().packed_cache()); },
          "How this load used the packed cache file: path, source (off | mapped | written | "
          "shared | memory-only), file_bytes, file_entries, mapped_bytes, copied_bytes, copy_seconds, "
          "load_seconds, check_seconds, check_hashed, note.")
      .def_property_readonly("load_anon_bytes", [](const PySession& s) { return s.session().load_anon_bytes(); })
      .def_property_readonly("memory_planned_inputs",
                             [](const PySession& s) { return s.session().memory_planned_inputs(); });
  def_running(session);

  py::class_<PyHtpSession> htp(m, "HtpSession");
  htp.def(py::init<const std::string&, const std::string&, size_t, uint64_t>(), py::arg("program_path"),
          py::arg("foundation_path"), py::kw_only(), py::arg("max_resident_adapters") = 0,
          py::arg("max_resident_adapter_bytes") = 0,
          "Load an HTP-shaped program (model_htp.pte; etlora_program_kind 'htp') with foundation.ptd "
          "('' for a program that carries its foundation). The KV cache lives on the host; no adapter "
          "active. Hand it a QNN program only after choose_backend said 'htp'.")
      .def_property_readonly("chunk_len", [](const PyHtpSession& s) { return s.session().htp_info().chunk_len; })
      .def_property_readonly("cache_len", [](const PyHtpSession& s) { return s.session().htp_info().cache_len; })
      .def_property_readonly("sliding_window",
                             [](const PyHtpSession& s) { return s.session().htp_info().sliding_window; },
                             "W of the model's sliding-window layers (0: none).")
      .def_property_readonly("last_chunks", [](const PyHtpSession& s) { return s.session().last_chunks(); },
                             "Runs of the program the last forward() took.");
  def_running(htp);
}

}  // namespace etlora_python
