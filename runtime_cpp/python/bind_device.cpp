// etlora._runtime's process-wide calls: the backend decision and the device
// facts it rests on, the thread pool, the kernel path, the XNNPACK weight cache
// and the packed cache file.
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <pybind11/stl.h>

#include <etlora/htp_facts_json.h>
#include <etlora/htp_probe.h>
#include <etlora/kernel_path.h>
#include <etlora/logging.h>
#include <etlora/packed_cache.h>
#include <etlora/session.h>
#include <etlora/thread_pool.h>

#include "binding_util.h"

namespace etlora_python {

namespace {

using namespace pybind11::literals;

// The device facts as a dict, and back: through their JSON form, whose seven
// keys are written once (etlora/htp_facts_json.h).
py::object htp_facts_dict(const etlora::HtpFacts& facts) {
  return py::module_::import("json").attr("loads")(etlora::htp_facts_to_json(facts));
}

etlora::HtpFacts htp_facts_from(const py::dict& dict) {
  const std::string text = py::str(py::module_::import("json").attr("dumps")(dict));
  auto facts = etlora::htp_facts_from_json(text, "facts");
  if (!facts.ok()) raise_status(facts.status());
  return *facts;
}

template <typename T>
T dict_member(const py::dict& dict, const char* where, const char* key) {
  if (!dict.contains(key)) throw py::value_error(std::string(where) + ": expected a '" + key + "' key, received none");
  py::object value = dict[key];
  if (!py::isinstance<py::str>(value)) {
    throw py::value_error(std::string(where) + "['" + key + "']: expected a str, received " +
                          std::string(py::str(py::repr(value))));
  }
  return value.cast<T>();
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

void bind_device(py::module_& m) {
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
      "workspace_sharing_mode), open_sessions, cached_sessions, packed_cache_files (packed cache files "
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
      "The packed cache file's path (cache_dir or <bundle>/.etlora-cache, created); ValueError "
      "saying why when the folder is unusable. The runner uses the same rule.");
  m.def("packed_cache_file_name", &etlora::packed_cache_file_name, py::arg("foundation_weights_id"),
        "The packed cache file's name for a fingerprint and this runtime.");
  m.def(
      "check_packed_cache_file",
      [](const std::string& path) {
        const etlora::PackedFileCheck check = etlora::check_packed_cache_file(path);
        return py::dict("valid"_a = check.valid, "problem"_a = check.problem,
                        "file_bytes"_a = check.file_bytes, "entries"_a = check.entries);
      },
      py::arg("path"), "Footer check of a packed cache file: valid, problem, file_bytes, entries.");
  m.def("htp_facts", [] { return htp_facts_dict(etlora::gather_htp_facts()); },
        "What this device offers an HTP program, read now (etlora::gather_htp_facts): "
        "htp_library_loadable/_error (libQnnHtp.so), system_library_loadable/_error (libQnnSystem.so), "
        "dsp_device (a Hexagon FastRPC node or ''), soc ('' when unknown), soc_source. ETLORA_SOC overrides the SoC.");
  m.def(
      "choose_backend",
      [](const std::string& requested, const py::dict& facts, const py::object& htp_program) {
        auto request = etlora::parse_backend_request(requested);
        if (!request.ok()) raise_status(request.status());
        const etlora::HtpFacts device = htp_facts_from(facts);
        const std::optional<etlora::HtpProgramFacts> program = htp_program_from(htp_program);
        auto choice = etlora::choose_backend(*request, device, program);
        if (!choice.ok()) raise_status(choice.status());
        return py::make_tuple(etlora::backend_name(choice->backend), choice->reason);
      },
      py::arg("requested"), py::arg("facts"), py::arg("htp_program"),
      "The backend decision (etlora::choose_backend, rule in htp_probe.h): requested 'auto' | 'xnnpack' | "
      "'htp', facts as htp_facts() returns them, htp_program None or Bundle.htp_program. Returns "
      "(backend, reason); ValueError when 'htp' was requested and cannot run.");
}

}  // namespace etlora_python
