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

// A Session or an HtpSession run with the GIL released, the mutex keeping two
// Python threads from running one session at once.
template <class AnySession>
class PyRunning {
 public:
  void set_adapters(const std::vector<std::tuple<std::string, float>>& adapters) {
    std::vector<etlora::AdapterChoice> choices;
    for (const auto& [path, strength] : adapters) choices.push_back({path, strength});
    etlora::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = session_->set_adapters(choices);
    }
    if (!status.ok()) raise_status(status);
  }

  py::array_t<float> forward(const py::object& tokens, int64_t start_pos) {
    std::vector<int64_t> ids = to_tokens(tokens);
    etlora::StatusOr<std::vector<float>> logits = std::vector<float>();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      logits = session_->forward(ids, start_pos);
    }
    if (!logits.ok()) raise_status(logits.status());
    return to_array(std::move(*logits));
  }

  py::tuple generate(const py::object& prompt, int64_t max_new_tokens, float temperature, float top_p,
                     uint64_t seed, const py::object& on_token, const std::vector<int64_t>& eos_ids,
                     bool reuse_prefix) {
    return run_generate(*session_, mutex_, prompt, max_new_tokens, temperature, top_p, seed, on_token, eos_ids,
                        reuse_prefix);
  }

  size_t release_unbound_adapters() {
    std::lock_guard<std::mutex> lock(mutex_);
    return session_->release_unbound_adapters();
  }

  const AnySession& session() const { return *session_; }

 protected:
  // Opens with the GIL released; raises on failure.
  template <class Open>
  void open(Open&& open_session) {
    etlora::StatusOr<std::unique_ptr<AnySession>> opened =
        etlora::Status(etlora::StatusCode::kRuntimeError, "not opened");
    {
      py::gil_scoped_release release;
      opened = open_session();
    }
    if (!opened.ok()) raise_status(opened.status());
    session_ = std::move(*opened);
  }

  std::unique_ptr<AnySession> session_;
  std::mutex mutex_;
};

class PySession : public PyRunning<etlora::Session> {
 public:
  PySession(const std::string& program_path, const std::string& foundation_path, bool weight_cache,
            const std::string& packed_cache_path, const std::string& packed_cache_residency,
            size_t max_resident_adapters, uint64_t max_resident_adapter_bytes) {
    etlora::SessionOptions options;
    options.weight_cache = weight_cache;
    options.max_resident_adapters = max_resident_adapters;
    options.max_resident_adapter_bytes = max_resident_adapter_bytes;
    options.packed_cache_path = packed_cache_path;
    if (packed_cache_residency == "map") {
      options.packed_cache_residency = etlora::PackedCacheResidency::kMap;
    } else if (packed_cache_residency != "copy") {
      throw py::value_error("packed_cache_residency: expected 'copy' or 'map', got '" + packed_cache_residency + "'");
    }
    open([&] { return etlora::Session::open(program_path, foundation_path, options); });
  }
};

// An HtpSession: the HTP-shaped program with its KV cache on the host.
class PyHtpSession : public PyRunning<etlora::HtpSession> {
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
  cls.def("set_adapters", &Py::set_adapters, py::arg("adapters"),
          "Activate [(adapter.ptd, strength), ...] in slot order; [] turns adapters off.")
      .def("forward", &Py::forward, py::arg("tokens"), py::arg("start_pos"),
           "Run tokens at positions start_pos.. and return the last position's logits.")
      .def(
          "logits", [](Py& s, const py::object& tokens) { return s.forward(tokens, 0); }, py::arg("tokens"),
          "forward(tokens, 0): a fresh prefill.")
      .def("generate", &Py::generate, py::arg("prompt_ids"), py::arg("max_new_tokens"),
           py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f, py::arg("seed") = 0,
           py::arg("on_token") = py::none(), py::arg("eos_ids") = std::vector<int64_t>(),
           py::arg("reuse_prefix") = false,
           "Generate after prompt_ids (prefill from position 0): greedy at temperature 0, else\n"
           "top-p sampling seeded by seed. Stops at an eos_ids token (not returned), max_new_tokens\n"
           "or max_seq_len; on_token(id) is called per token and may return False to stop.\n"
           "Returns (ids, stats dict).")
      .def("reusable_prefix",
           [](const Py& s, const py::object& prompt) { return s.session().reusable_prefix(to_tokens(prompt)); },
           py::arg("prompt"), "Leading positions of the KV cache a prefill of prompt can keep.")
      .def("release_unbound_adapters", &Py::release_unbound_adapters,
           "Close every open adapter file no slot binds (unmaps its pages); returns how many.")
      .def_property_readonly(
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
      .def_property_readonly("last_chunks", [](const PyHtpSession& s) { return s.session().last_chunks(); },
                             "Runs of the program the last forward() took.");
  def_running(htp);
}

}  // namespace etlora_python
