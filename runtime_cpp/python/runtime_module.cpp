// etlora._runtime: the Python face of the C++ Session (same library, no
// second implementation). Errors become Python exceptions carrying the C++
// message: ValueError for bad input or incompatible files, FileNotFoundError
// (also a ValueError) for missing files, RuntimeError for ExecuTorch failures.
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <etlora/bundle.h>
#include <etlora/generator.h>
#include <etlora/htp_probe.h>
#include <etlora/htp_session.h>
#include <etlora/kernel_path.h>
#include <etlora/logging.h>
#include <etlora/thread_pool.h>
#include <etlora/session.h>
#include <etlora/tokenizer.h>

namespace py = pybind11;
using namespace pybind11::literals;

void bind_chat_commands(py::module_& m);  // bind_chat_commands.cpp

namespace {

py::object& missing_file_error() {
  static py::object type;  // set once at import, lives as long as the module
  return type;
}

[[noreturn]] void raise_status(const etlora::Status& status) {
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

// Tokens as a list of ints or an integer array of shape [T] or [1, T].
std::vector<int64_t> to_tokens(const py::object& tokens) {
  if (py::isinstance<py::array>(tokens)) {
    auto array = py::reinterpret_borrow<py::array>(tokens);
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u') {
      throw py::value_error("tokens: expected an integer array, got dtype " +
                            std::string(py::str(array.dtype())));
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

// The C++ generator over a Session or an HtpSession with the GIL released;
// on_token(id) runs with the GIL held and may return False to stop. Returns
// (ids, stats).
template <class AnySession>
py::tuple run_generate(AnySession& session, std::mutex& mutex, const py::object& prompt, int64_t max_new_tokens,
                       float temperature, float top_p, uint64_t seed, const py::object& on_token,
                       const std::vector<int64_t>& eos_ids, bool reuse_prefix) {
  std::vector<int64_t> ids = to_tokens(prompt);
  etlora::GenerationOptions options{max_new_tokens, temperature, top_p, seed, eos_ids, reuse_prefix};
  std::optional<py::error_already_set> callback_error;
  etlora::TokenCallback callback;
  if (!on_token.is_none()) {
    callback = [&](int64_t token) {
      py::gil_scoped_acquire acquire;
      try {
        py::object keep_going = on_token(token);
        return keep_going.is_none() || keep_going.cast<bool>();
      } catch (py::error_already_set& error) {
        callback_error.emplace(std::move(error));
        return false;
      }
    };
  }
  etlora::StatusOr<etlora::GenerationResult> result = etlora::Status();
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex);
    result = etlora::generate(session, ids, options, callback);
  }
  if (callback_error) throw std::move(*callback_error);
  if (!result.ok()) raise_status(result.status());
  const etlora::GenerationStats& stats = result->stats;
  py::dict info("prompt_tokens"_a = stats.prompt_tokens, "reused_tokens"_a = stats.reused_tokens,
                "generated_tokens"_a = stats.generated_tokens,
                "decode_steps"_a = stats.decode_steps, "prefill_seconds"_a = stats.prefill_seconds,
                "decode_seconds"_a = stats.decode_seconds,
                "prefill_tokens_per_second"_a = stats.prefill_tokens_per_second(),
                "decode_tokens_per_second"_a = stats.decode_tokens_per_second(),
                "stop_reason"_a = stats.stop_reason);
  return py::make_tuple(py::cast(result->tokens), info);
}

// What both Python session classes do: run a Session or an HtpSession with
// the GIL released, the mutex keeping two Python threads from running one
// session at once.
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
      throw py::value_error("packed_cache_residency: expected 'copy' or 'map', got '" +
                            packed_cache_residency + "'");
    }
    open([&] { return etlora::Session::open(program_path, foundation_path, options); });
  }

  size_t release_unbound_adapters() {
    std::lock_guard<std::mutex> lock(mutex_);
    return session_->release_unbound_adapters();
  }
};

// An HtpSession: the HTP-shaped program with its KV cache on the host.
class PyHtpSession : public PyRunning<etlora::HtpSession> {
 public:
  PyHtpSession(const std::string& program_path, const std::string& foundation_path) {
    open([&] { return etlora::HtpSession::open(program_path, foundation_path); });
  }
};

py::dict packed_cache_dict(const etlora::PackedCacheInfo& info) {
  return py::dict("path"_a = info.path, "source"_a = etlora::packed_cache_source_name(info.source),
                  "file_bytes"_a = info.file_bytes, "file_entries"_a = info.file_entries,
                  "mapped_bytes"_a = info.mapped_bytes, "copied_bytes"_a = info.copied_bytes,
                  "copy_seconds"_a = info.copy_seconds, "load_seconds"_a = info.load_seconds,
                  "check_seconds"_a = info.check_seconds, "check_hashed"_a = info.check_hashed,
                  "note"_a = info.note);
}

// Decoded bytes as str; a character cut off at the end shows as U+FFFD.
py::str to_text(const std::string& bytes) {
  return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(bytes.data(), bytes.size(), "replace"));
}

std::shared_ptr<etlora::Tokenizer> load_tokenizer(const std::string& path) {
  auto loaded = etlora::Tokenizer::load(path);
  if (!loaded.ok()) raise_status(loaded.status());
  return std::shared_ptr<etlora::Tokenizer>(std::move(*loaded));
}

// A TokenTextStream that keeps its tokenizer alive.
class PyTokenStream {
 public:
  explicit PyTokenStream(std::shared_ptr<etlora::Tokenizer> tokenizer)
      : tokenizer_(std::move(tokenizer)), stream_(*tokenizer_) {}
  py::str push(int64_t id) {
    auto text = stream_.push(id);
    if (!text.ok()) raise_status(text.status());
    return to_text(*text);
  }
  py::str finish() { return to_text(stream_.finish()); }

 private:
  std::shared_ptr<etlora::Tokenizer> tokenizer_;
  etlora::TokenTextStream stream_;
};

// HtpFacts as a flat dict (the keys of kHtpFactKeys), and back, so tests can fake each fact.
constexpr const char* kHtpFactKeys[] = {"htp_library_loadable", "htp_library_error", "system_library_loadable",
                                        "system_library_error", "dsp_device", "soc", "soc_source"};

py::dict htp_facts_dict(const etlora::HtpFacts& facts) {
  return py::dict("htp_library_loadable"_a = facts.htp_library.loadable,
                  "htp_library_error"_a = facts.htp_library.error,
                  "system_library_loadable"_a = facts.system_library.loadable,
                  "system_library_error"_a = facts.system_library.error, "dsp_device"_a = facts.dsp_device,
                  "soc"_a = facts.soc, "soc_source"_a = facts.soc_source);
}

std::string key_list(const char* const* keys, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) out += (i ? ", " : "") + std::string(keys[i]);
  return out;
}

template <typename T>
T dict_member(const py::dict& dict, const char* where, const char* key) {
  if (!dict.contains(key)) throw py::value_error(std::string(where) + ": expected a '" + key + "' key, received none");
  py::object value = dict[key];
  const bool right_type = std::is_same_v<T, bool> ? py::isinstance<py::bool_>(value) : py::isinstance<py::str>(value);
  if (!right_type) {
    throw py::value_error(std::string(where) + "['" + key + "']: expected " +
                          (std::is_same_v<T, bool> ? "a bool" : "a str") + ", received " +
                          std::string(py::str(py::repr(value))));
  }
  return value.cast<T>();
}

etlora::HtpFacts htp_facts_from(const py::dict& dict) {
  constexpr size_t count = sizeof(kHtpFactKeys) / sizeof(kHtpFactKeys[0]);
  for (const auto& item : dict) {
    const std::string key = py::str(item.first);
    bool known = false;
    for (const char* k : kHtpFactKeys) known = known || key == k;
    if (!known) {
      throw py::value_error("facts: expected only the keys " + key_list(kHtpFactKeys, count) + ", received '" +
                            key + "' (hint: start from htp_facts())");
    }
  }
  etlora::HtpFacts facts;
  facts.htp_library.loadable = dict_member<bool>(dict, "facts", "htp_library_loadable");
  facts.htp_library.error = dict_member<std::string>(dict, "facts", "htp_library_error");
  facts.system_library.loadable = dict_member<bool>(dict, "facts", "system_library_loadable");
  facts.system_library.error = dict_member<std::string>(dict, "facts", "system_library_error");
  facts.dsp_device = dict_member<std::string>(dict, "facts", "dsp_device");
  facts.soc = dict_member<std::string>(dict, "facts", "soc");
  facts.soc_source = dict_member<std::string>(dict, "facts", "soc_source");
  return facts;
}

// None, or a dict with at least soc and path (Bundle.htp_program's dict qualifies).
std::optional<etlora::HtpProgramFacts> htp_program_from(const py::object& program) {
  if (program.is_none()) return std::nullopt;
  if (!py::isinstance<py::dict>(program)) {
    throw py::value_error("htp_program: expected None or a dict with 'soc' and 'path' (Bundle.htp_program), "
                          "received " + std::string(py::str(py::repr(program))));
  }
  const py::dict dict = py::reinterpret_borrow<py::dict>(program);
  return etlora::HtpProgramFacts{dict_member<std::string>(dict, "htp_program", "soc"),
                                 dict_member<std::string>(dict, "htp_program", "path")};
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "etlora C++ runtime: run an etlora bundle with switchable adapters";
  etlora::install_runtime_log_filter();  // ExecuTorch's info lines only with ETLORA_LOG=info
  missing_file_error() = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyType_Type))(
      "MissingFileError",
      py::make_tuple(py::handle(PyExc_FileNotFoundError), py::handle(PyExc_ValueError)),
      py::dict("__module__"_a = "etlora._runtime"));
  m.attr("MissingFileError") = missing_file_error();
  m.attr("FORMAT_VERSION") = etlora::kFormatVersion;
  bind_chat_commands(m);

  m.def(
      "weight_cache_stats",
      []() {
        auto stats = etlora::weight_cache_stats();
        if (!stats.ok()) raise_status(stats.status());
        return py::dict("default_enabled"_a = stats->default_enabled,
                        "cached_sessions"_a = stats->cached_sessions,
                        "workspace_sharing_mode"_a = stats->workspace_sharing_mode,
                        "open_sessions"_a = stats->open_sessions, "rss_bytes"_a = stats->rss_bytes,
                        "rss_anon_bytes"_a = stats->rss_anon_bytes,
                        "rss_file_bytes"_a = stats->rss_file_bytes,
                        "packed_cache_files"_a = stats->packed_cache_files);
      },
      "XNNPACK weight cache figures: the backend's global options (default_enabled, "
      "workspace_sharing_mode), open_sessions, cached_sessions, packed_cache_files (packed foundation files "
      "held by live sessions) and the process's memory (rss_bytes, rss_anon_bytes, rss_file_bytes). "
      "The backend exposes no entry/hit counters.");
  m.def("set_runtime_log_verbose", &etlora::set_runtime_log_verbose, py::arg("verbose"),
        "Show ExecuTorch's info lines (True) or only its errors (False, the default unless ETLORA_LOG=info).");
  m.def("executorch_version", &etlora::executorch_version,
        "The executorch release the runtime was built against (part of packed file names).");
  m.def(
      "configure_thread_pool",
      [](double worker_spin_us) {
        etlora::ThreadPoolOptions options;
        options.worker_spin_us = worker_spin_us;
        const etlora::Status status = etlora::configure_thread_pool(options);
        if (!status.ok()) raise_status(status);
      },
      py::arg("worker_spin_us"),
      "Keep ExecuTorch's pool workers spinning worker_spin_us after each task (process-wide).");
  m.def(
      "thread_pool_state",
      [] {
        const etlora::ThreadPoolState state = etlora::thread_pool_state();
        return py::dict("configured"_a = state.configured, "installed"_a = state.installed,
                        "worker_threads"_a = state.worker_threads,
                        "worker_spin_us"_a = state.worker_spin_us);
      },
      "configured, installed (etlora's executor provides the workers), worker_threads, worker_spin_us.");
  m.def(
      "kernel_paths",
      [] {
        py::list paths;
        for (const etlora::KernelPathInfo& path : etlora::kernel_paths()) {
          paths.append(py::dict("name"_a = path.name, "needs"_a = path.needs,
                                "runnable"_a = path.runnable));
        }
        return paths;
      },
      "The vector paths this build compiled, best first: name, needs (CPU features), runnable.");
  m.def(
      "select_kernel_path",
      [](const std::string& name) {
        if (const etlora::Status status = etlora::select_kernel_path(name); !status.ok()) {
          raise_status(status);
        }
      },
      py::arg("name"), "Run etlora's kernels on this path (or 'auto'), process-wide.");
  m.def(
      "kernel_path",
      [] {
        auto path = etlora::kernel_path();
        if (!path.ok()) raise_status(path.status());
        return *path;
      },
      "The path in effect (settled from ETLORA_KERNEL_PATH or auto on first use).");
  m.def(
      "packed_cache_path",
      [](const std::string& bundle_dir, const std::string& cache_dir, const std::string& weights_id) {
        auto path = etlora::packed_cache_path(bundle_dir, cache_dir, weights_id);
        if (!path.ok()) raise_status(path.status());
        return *path;
      },
      py::arg("bundle_dir"), py::arg("cache_dir"), py::arg("foundation_weights_id"),
      "The packed foundation file's path (cache_dir or <bundle>/.etlora-cache, created); ValueError "
      "saying why when the folder is unusable. The runner uses the same rule.");
  m.def("packed_cache_file_name", &etlora::packed_cache_file_name, py::arg("foundation_weights_id"),
        "The packed foundation file's name for a fingerprint and this runtime.");
  m.def(
      "check_packed_cache_file",
      [](const std::string& path) {
        const etlora::PackedFileCheck check = etlora::check_packed_cache_file(path);
        return py::dict("valid"_a = check.valid, "problem"_a = check.problem,
                        "file_bytes"_a = check.file_bytes, "entries"_a = check.entries);
      },
      py::arg("path"), "Footer check of a packed foundation file: valid, problem, file_bytes, entries.");
  m.def("htp_facts", [] { return htp_facts_dict(etlora::gather_htp_facts()); },
        "What this device offers an HTP program, read now (etlora::gather_htp_facts): "
        "htp_library_loadable/_error (libQnnHtp.so), system_library_loadable/_error (libQnnSystem.so), "
        "dsp_device (a Hexagon FastRPC node or ''), soc ('' when unknown), soc_source. ETLORA_SOC overrides the SoC.");
  m.def(
      "choose_backend",
      [](const std::string& requested, const py::dict& facts, const py::object& htp_program,
         bool htp_session_available) {
        auto request = etlora::parse_backend_request(requested);
        if (!request.ok()) raise_status(request.status());
        const etlora::HtpFacts device = htp_facts_from(facts);
        const std::optional<etlora::HtpProgramFacts> program = htp_program_from(htp_program);
        auto choice = etlora::choose_backend(*request, device, program, htp_session_available);
        if (!choice.ok()) raise_status(choice.status());
        return py::make_tuple(etlora::backend_name(choice->backend), choice->reason);
      },
      py::arg("requested"), py::arg("facts"), py::arg("htp_program"), py::arg("htp_session_available") = false,
      "The backend decision (etlora::choose_backend, rule in htp_probe.h): requested 'auto' | 'xnnpack' | "
      "'htp', facts as htp_facts() returns them, htp_program None or Bundle.htp_program. Returns "
      "(backend, reason); ValueError when 'htp' was requested and cannot run.");
  py::class_<PySession>(m, "Session")
      .def(py::init<const std::string&, const std::string&, bool, const std::string&,
                    const std::string&, size_t, uint64_t>(),
           py::arg("program_path"), py::arg("foundation_path"), py::kw_only(),
           py::arg("weight_cache") = true, py::arg("packed_cache_path") = "",
           py::arg("packed_cache_residency") = "copy", py::arg("max_resident_adapters") = 0,
           py::arg("max_resident_adapter_bytes") = 0,
           "Load model.pte with foundation.ptd (memory-mapped); no adapter active. weight_cache: "
           "share packed foundation weights with other Sessions (XNNPACK weight cache). "
           "packed_cache_path: the packed foundation file (name from packed_cache_file_name), "
           "written at the first start and mapped at later ones; '' = off. packed_cache_residency: "
           "'copy' moves the packed weights into private memory after the load, 'map' keeps the "
           "file mapped. max_resident_adapters: adapter files kept open for a fast switch back "
           "(least recently bound closed first); 0 = no limit. max_resident_adapter_bytes: the "
           "same for their file sizes together (bound adapters always stay); 0 = no limit.")
      .def("set_adapters", &PySession::set_adapters, py::arg("adapters"),
           "Activate [(adapter.ptd, strength), ...] in slot order; [] turns adapters off.")
      .def("forward", &PySession::forward, py::arg("tokens"), py::arg("start_pos"),
           "Run tokens at positions start_pos.. and return the last position's logits.")
      .def(
          "logits", [](PySession& s, const py::object& tokens) { return s.forward(tokens, 0); },
          py::arg("tokens"), "forward(tokens, 0): a fresh prefill.")
      .def("generate", &PySession::generate, py::arg("prompt_ids"), py::arg("max_new_tokens"),
           py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f, py::arg("seed") = 0,
           py::arg("on_token") = py::none(), py::arg("eos_ids") = std::vector<int64_t>(),
           py::arg("reuse_prefix") = false,
           "Generate after prompt_ids (prefill from position 0): greedy at temperature 0, else\n"
           "top-p sampling seeded by seed. Stops at an eos_ids token (not returned), max_new_tokens\n"
           "or max_seq_len; on_token(id) is called per token and may return False to stop.\n"
           "Returns (ids, stats dict).")
      .def_property_readonly("sites", [](const PySession& s) { return s.session().info().sites; })
      .def_property_readonly("site_shapes",
                             [](const PySession& s) { return s.session().info().site_shapes; })
      .def_property_readonly("max_rank",
                             [](const PySession& s) { return s.session().info().max_rank; })
      .def_property_readonly("adapter_slots",
                             [](const PySession& s) { return s.session().info().adapter_slots; })
      .def_property_readonly("max_seq_len",
                             [](const PySession& s) { return s.session().info().max_seq_len; })
      .def_property_readonly("weight_cache",
                             [](const PySession& s) { return s.session().weight_cache(); })
      .def_property_readonly(
          "packed_cache",
          [](const PySession& s) { return packed_cache_dict(s.session().packed_cache()); },
          "How this load used the packed foundation file: path, source (off | mapped | written | "
          "shared | memory-only), file_bytes, file_entries, mapped_bytes, copied_bytes, copy_seconds, "
          "load_seconds, check_seconds, check_hashed, note.")
      .def_property_readonly("load_anon_bytes",
                             [](const PySession& s) { return s.session().load_anon_bytes(); })
      .def_property_readonly("vocab_size",
                             [](const PySession& s) { return s.session().info().vocab_size; })
      .def_property_readonly("format_version",
                             [](const PySession& s) { return s.session().info().format_version; })
      .def_property_readonly(
          "foundation_fingerprint",
          [](const PySession& s) { return s.session().info().foundation_fingerprint; })
      .def_property_readonly(
          "memory_planned_inputs",
          [](const PySession& s) { return s.session().memory_planned_inputs(); })
      .def(
          "release_unbound_adapters",
          &PySession::release_unbound_adapters,
          "Close every open adapter file no slot binds (unmaps its pages); returns how many.")
      .def_property_readonly(
          "resident_adapters", [](const PySession& s) { return s.session().resident_adapter_paths(); },
          "Adapter files held open (checked, mapped), most recently bound first.")
      .def_property_readonly(
          "resident_adapter_bytes", [](const PySession& s) { return s.session().resident_adapter_bytes(); },
          "The open adapter files' sizes together (what max_resident_adapter_bytes bounds).")
      .def_property_readonly("active_adapters", [](const PySession& s) {
        std::vector<std::tuple<std::string, float>> active;
        for (const auto& a : s.session().active_adapters()) active.emplace_back(a.path, a.strength);
        return active;
      });

  py::class_<PyHtpSession>(m, "HtpSession")
      .def(py::init<const std::string&, const std::string&>(), py::arg("program_path"),
           py::arg("foundation_path"),
           "Load an HTP-shaped program (model_htp.pte; etlora_program_kind 'htp') with foundation.ptd "
           "('' for a program that carries its foundation). The KV cache lives on the host; no adapter "
           "active. Hand it a QNN program only after choose_backend said 'htp'.")
      .def("set_adapters", &PyHtpSession::set_adapters, py::arg("adapters"),
           "Activate [(adapter.ptd, strength), ...] in slot order; [] turns adapters off.")
      .def("forward", &PyHtpSession::forward, py::arg("tokens"), py::arg("start_pos"),
           "Run tokens at positions start_pos.. in chunks of chunk_len and return the last position's logits.")
      .def(
          "logits", [](PyHtpSession& s, const py::object& tokens) { return s.forward(tokens, 0); },
          py::arg("tokens"), "forward(tokens, 0): a fresh prefill.")
      .def("generate", &PyHtpSession::generate, py::arg("prompt_ids"), py::arg("max_new_tokens"),
           py::arg("temperature") = 0.0f, py::arg("top_p") = 1.0f, py::arg("seed") = 0,
           py::arg("on_token") = py::none(), py::arg("eos_ids") = std::vector<int64_t>(),
           py::arg("reuse_prefix") = false,
           "Session.generate's loop (etlora::generate) over the HTP-shaped program.")
      .def_property_readonly("max_seq_len", [](const PyHtpSession& s) { return s.session().info().max_seq_len; })
      .def_property_readonly("chunk_len", [](const PyHtpSession& s) { return s.session().htp_info().chunk_len; })
      .def_property_readonly("cache_len", [](const PyHtpSession& s) { return s.session().htp_info().cache_len; })
      .def_property_readonly("sites", [](const PyHtpSession& s) { return s.session().info().sites; })
      .def_property_readonly("site_shapes", [](const PyHtpSession& s) { return s.session().info().site_shapes; })
      .def_property_readonly("max_rank", [](const PyHtpSession& s) { return s.session().info().max_rank; })
      .def_property_readonly("adapter_slots",
                             [](const PyHtpSession& s) { return s.session().info().adapter_slots; })
      .def_property_readonly("vocab_size", [](const PyHtpSession& s) { return s.session().info().vocab_size; })
      .def_property_readonly("format_version",
                             [](const PyHtpSession& s) { return s.session().info().format_version; })
      .def_property_readonly("foundation_fingerprint",
                             [](const PyHtpSession& s) { return s.session().info().foundation_fingerprint; })
      .def_property_readonly("last_chunks", [](const PyHtpSession& s) { return s.session().last_chunks(); },
                             "Runs of the program the last forward() took.")
      .def_property_readonly("active_adapters", [](const PyHtpSession& s) {
        std::vector<std::tuple<std::string, float>> active;
        for (const auto& a : s.session().active_adapters()) active.emplace_back(a.path, a.strength);
        return active;
      });

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

  py::class_<etlora::Tokenizer, std::shared_ptr<etlora::Tokenizer>>(m, "Tokenizer")
      .def(py::init(&load_tokenizer), py::arg("path"), "Load tokenizer/etlora_tokenizer.txt.")
      .def("encode", &etlora::Tokenizer::encode, py::arg("text"),
           "Token ids of text; special tokens in the text are matched literally; no bos added.")
      .def("encode_prompt", &etlora::Tokenizer::encode_prompt, py::arg("text"), py::arg("chat"),
           "A prompt as generation sees it, the same for the runner and Session.generate: the chat "
           "template when chat and the tokenizer has one, else bos (if the tokenizer adds it) + text.")
      .def("encode_chat", &etlora::Tokenizer::encode_chat, py::arg("user_text"),
           "encode(chat_prefix + user_text + chat_suffix).")
      .def(
          "decode",
          [](const etlora::Tokenizer& t, const std::vector<int64_t>& ids) {
            auto bytes = t.decode(ids);
            if (!bytes.ok()) raise_status(bytes.status());
            return to_text(*bytes);
          },
          py::arg("ids"), "The text of ids (invalid UTF-8 shows as U+FFFD).")
      .def(
          "decode_bytes",
          [](const etlora::Tokenizer& t, const std::vector<int64_t>& ids) {
            auto bytes = t.decode(ids);
            if (!bytes.ok()) raise_status(bytes.status());
            return py::bytes(*bytes);
          },
          py::arg("ids"), "The raw bytes of ids.")
      .def("stream", [](std::shared_ptr<etlora::Tokenizer> t) { return PyTokenStream(std::move(t)); },
           "A TokenStream: push(id) -> text ready to print, finish() -> the rest.")
      .def_property_readonly("path", &etlora::Tokenizer::path)
      .def_property_readonly("vocab_size", &etlora::Tokenizer::vocab_size)
      .def_property_readonly("has_chat_template", &etlora::Tokenizer::has_chat_template)
      .def_property_readonly("chat_prefix", [](const etlora::Tokenizer& t) { return to_text(t.chat_prefix()); })
      .def_property_readonly("chat_suffix", [](const etlora::Tokenizer& t) { return to_text(t.chat_suffix()); })
      .def_property_readonly("eos_ids", &etlora::Tokenizer::eos_ids)
      .def_property_readonly("bos_id", [](const etlora::Tokenizer& t) -> py::object {
        if (t.bos_id() < 0) return py::none();
        return py::int_(t.bos_id());
      })
      .def_property_readonly("adds_bos", &etlora::Tokenizer::adds_bos);

  py::class_<PyTokenStream>(m, "TokenStream")
      .def("push", &PyTokenStream::push, py::arg("id"))
      .def("finish", &PyTokenStream::finish);
}
