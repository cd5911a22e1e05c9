// etlora_runner --chat (runner_chat.h).
#include "runner/runner_chat.h"

#include <cstdio>
#include <iostream>

#include "runner/runner_output.h"

namespace etlora_runner {

namespace {

std::string trimmed(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r") - first + 1);
}

// "/adapters a=1, b=0.5" -> the choices as given; "" -> none.
std::vector<etlora::AdapterChoice> parse_adapter_line(const std::string& list) {
  std::vector<etlora::AdapterChoice> choices;
  size_t start = 0;
  while (start < list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const std::string item = trimmed(list.substr(start, end - start));
    start = end + 1;
    if (!item.empty()) choices.push_back(parse_adapter(item));
  }
  return choices;
}

}  // namespace

int run_chat(etlora::RunningProgram& program, const etlora::Tokenizer& tok, const AdapterResolver& resolve,
             const Options& options) {
  int status = 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    const std::string text = trimmed(line);
    if (text.empty()) continue;
    if (text == "/quit") break;
    if (text == "/adapters" || text.rfind("/adapters ", 0) == 0) {
      auto choices = resolve(parse_adapter_line(text.substr(std::string("/adapters").size())));
      etlora::Status switched = choices.ok() ? program.set_adapters(*choices) : choices.status();
      if (!switched.ok()) {
        std::fprintf(stderr, "error: %s\n", switched.message().c_str());
        status = 1;
        continue;
      }
      std::fprintf(stderr, "adapters: %zu active | %s\n", choices->size(), resident_line(program).c_str());
      continue;
    }
    if (text[0] == '/') {
      std::fprintf(stderr, "error: unknown command %s (expected /adapters NAME[=STRENGTH],... or /quit)\n",
                   text.c_str());
      status = 1;
      continue;
    }
    if (generate_text(program, tok, text, options, /*reuse_prefix=*/true) != 0) status = 1;
  }
  return status;
}

}  // namespace etlora_runner
