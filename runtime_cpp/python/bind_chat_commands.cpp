// etlora._runtime's face of chat_commands.h: `etlora run` parses what a user types
// with the same code as etlora_runner. Every refusal is a ValueError with the C++ message.
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <etlora/chat_commands.h>

#include "binding_util.h"

namespace etlora_python {
namespace {

template <typename T>
T value_or_raise(etlora::StatusOr<T> result) {
  if (!result.ok()) raise_status(result.status());
  return std::move(*result);
}

using Pair = std::pair<std::string, float>;

std::vector<Pair> as_pairs(const std::vector<etlora::NamedAdapter>& adapters) {
  std::vector<Pair> pairs;
  for (const auto& adapter : adapters) pairs.emplace_back(adapter.name, adapter.strength);
  return pairs;
}

const char* kind_name(etlora::ChatCommandKind kind) {
  switch (kind) {
    case etlora::ChatCommandKind::kPrompt: return "prompt";
    case etlora::ChatCommandKind::kSetAdapters: return "adapters";
    case etlora::ChatCommandKind::kQuit: return "quit";
    case etlora::ChatCommandKind::kNothing: break;
  }
  return "nothing";
}

}  // namespace

void bind_chat_commands(py::module_& m) {
  m.def(
      "parse_chat_line",
      [](const std::string& line) {
        etlora::ChatCommand command = value_or_raise(etlora::parse_chat_line(line));
        return std::make_tuple(std::string(kind_name(command.kind)), command.prompt, as_pairs(command.adapters));
      },
      py::arg("line"),
      "One --chat line -> (kind, prompt, [(name, strength)]), kind one of nothing, prompt, adapters, quit.");
  m.def(
      "parse_named_adapter",
      [](const std::string& text, const std::string& where) {
        etlora::NamedAdapter choice = value_or_raise(etlora::parse_named_adapter(text, where));
        return Pair(choice.name, choice.strength);
      },
      py::arg("text"), py::arg("where"), "NAME or NAME=STRENGTH -> (name, strength).");
  m.def(
      "check_each_adapter_once",
      [](const std::vector<Pair>& pairs, const std::string& where) {
        std::vector<etlora::NamedAdapter> adapters;
        for (const auto& [name, strength] : pairs) adapters.push_back({name, strength});
        const etlora::Status once = etlora::check_each_adapter_once(adapters, where);
        if (!once.ok()) raise_status(once);
      },
      py::arg("adapters"), py::arg("where"), "ValueError when a name is given twice.");
  m.def(
      "parse_byte_size", [](const std::string& text) { return value_or_raise(etlora::parse_byte_size(text)); },
      py::arg("text"), "Bytes with an optional K, M or G suffix (powers of 1024).");
  m.def("resident_line", &etlora::resident_line, py::arg("names"), py::arg("bytes"),
        "The line both front ends print after an adapter switch.");
}

}  // namespace etlora_python
