// What every part of etlora._runtime shares: C++ Status -> Python exception,
// tokens in, logits and text out, and the generation loop with the GIL released.
#pragma once

#include <cstdint>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <etlora/generator.h>
#include <etlora/loaded_bundle.h>
#include <etlora/status.h>

namespace etlora_python {

namespace py = pybind11;

// MissingFileError (FileNotFoundError and ValueError), created at import.
py::object& missing_file_error();

// ValueError for bad input or incompatible files, MissingFileError for missing
// files, RuntimeError for ExecuTorch failures; the message is the C++ one.
[[noreturn]] void raise_status(const etlora::Status& status);

// Tokens as a list of ints or an integer array of shape [T] or [1, T].
std::vector<int64_t> to_tokens(const py::object& tokens);

py::array_t<float> to_array(std::vector<float>&& values);

// Decoded bytes as str; a character cut off at the end shows as U+FFFD.
py::str to_text(const std::string& bytes);

// The generation statistics as the dict Python callers read.
py::dict stats_dict(const etlora::GenerationStats& stats);

// "copy" or "map" (anything else: ValueError).
etlora::PackedCacheResidency to_residency(const std::string& name);

// The packed cache figures of a load as a dict.
py::dict packed_cache_dict(const etlora::PackedCacheInfo& info);

// The C++ generator over a Session, an HtpSession or a LoadedBundle with the
// GIL released; on_token(id) runs with the GIL held and may return False to
// stop. Returns (ids, stats).
template <class Runs>
py::tuple run_generate(Runs& runs, std::mutex& mutex, const py::object& prompt, int64_t max_new_tokens,
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
    if constexpr (std::is_same_v<Runs, etlora::LoadedBundle>) {
      result = runs.generate(ids, options, callback);
    } else {
      result = etlora::generate(runs, ids, options, callback);
    }
  }
  if (callback_error) throw std::move(*callback_error);
  if (!result.ok()) raise_status(result.status());
  return py::make_tuple(py::cast(result->tokens), stats_dict(result->stats));
}

// A Session, an HtpSession or a LoadedBundle run with the GIL released, the
// mutex keeping two Python threads from running one at once. Choice is what
// set_adapters takes: (path, strength) or (name, strength).
template <class AnySession, class Choice>
class PyRunning {
 public:
  void set_adapters(const std::vector<std::tuple<std::string, float>>& adapters) {
    std::vector<Choice> choices;
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

// The calls every PyRunning answers, bound once per class; `adapters_doc`
// says what set_adapters takes.
template <class Py>
void def_run_calls(py::class_<Py>& cls, const char* adapters_doc) {
  cls.def("set_adapters", &Py::set_adapters, py::arg("adapters"), adapters_doc)
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
           "Close every open adapter file no slot binds (unmaps its pages); returns how many.");
}

// The parts of the module, each in its own file.
void bind_sessions(py::module_& m);       // bind_sessions.cpp: Session, HtpSession
void bind_loaded_bundle(py::module_& m);  // bind_loaded_bundle.cpp: Bundle, LoadedBundle
void bind_text(py::module_& m);           // bind_text.cpp: Tokenizer, TokenStream
void bind_device(py::module_& m);         // bind_device.cpp: backend choice, thread pool, kernels, caches
void bind_chat_commands(py::module_& m);  // bind_chat_commands.cpp: what users type to `etlora run`

}  // namespace etlora_python
