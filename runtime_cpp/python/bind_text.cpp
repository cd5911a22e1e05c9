// etlora._runtime.Tokenizer and .TokenStream: the C++ tokenizer (src/text).
#include <memory>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include <etlora/tokenizer.h>

#include "binding_util.h"

namespace etlora_python {

namespace {

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

}  // namespace

void bind_text(py::module_& m) {
  py::class_<etlora::Tokenizer, std::shared_ptr<etlora::Tokenizer>>(m, "Tokenizer")
      .def(py::init(&load_tokenizer), py::arg("path"),
           "Load a tokenizer.json (and etlora_chat.json beside it, when there).")
      .def("encode", &etlora::Tokenizer::encode, py::arg("text"), py::arg("add_special_tokens") = false,
           "Token ids of text, as tokenizers' encode(text, add_special_tokens) gives them.")
      .def("encode_prompt", &etlora::Tokenizer::encode_prompt, py::arg("text"), py::arg("chat"),
           "A prompt as generation sees it, the same for the runner and Session.generate: the chat "
           "template when chat and the tokenizer has one, else encode(text, add_special_tokens=True).")
      .def("encode_chat", &etlora::Tokenizer::encode_chat, py::arg("user_text"),
           "encode(chat_prefix + user_text + chat_suffix).")
      .def(
          "decode",
          [](const etlora::Tokenizer& t, const std::vector<int64_t>& ids, bool skip_special_tokens) {
            auto text = t.decode(ids, skip_special_tokens);
            if (!text.ok()) raise_status(text.status());
            return to_text(*text);
          },
          py::arg("ids"), py::arg("skip_special_tokens") = false,
          "The text of ids, as tokenizers' decode gives it (invalid UTF-8 shows as U+FFFD).")
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

}  // namespace etlora_python
