// etlora_runner: run an etlora bundle from the command line.
//
//   etlora_runner --model model.pte --data foundation.ptd
//                 [--adapter path.ptd[=strength]]... --tokens 1,2,3
//
// Prints the argmax token and the first logits, with load and run times.
// Text in / text out (a tokenizer) is a later step: it will turn a prompt
// into --tokens and decode what generate() picks, around the same Session.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <etlora/session.h>

namespace {

struct Options {
  std::string model;
  std::string data;
  std::vector<etlora::AdapterChoice> adapters;
  std::vector<int64_t> tokens;
  int shown_logits = 8;
};

void usage() {
  std::fprintf(stderr,
               "usage: etlora_runner --model model.pte --data foundation.ptd\n"
               "                     [--adapter path.ptd[=strength]]... --tokens 1,2,3\n"
               "                     [--show N]\n");
}

bool parse_tokens(const std::string& text, std::vector<int64_t>& tokens) {
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    char* rest = nullptr;
    long long value = std::strtoll(item.c_str(), &rest, 10);
    if (item.empty() || *rest != '\0') return false;
    tokens.push_back(value);
    start = end + 1;
  }
  return !tokens.empty();
}

// "path.ptd" or "path.ptd=0.5"; a trailing "=x" that is not a number stays in the path.
etlora::AdapterChoice parse_adapter(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq != std::string::npos) {
    char* rest = nullptr;
    const std::string number = text.substr(eq + 1);
    float strength = std::strtof(number.c_str(), &rest);
    if (!number.empty() && *rest == '\0') return {text.substr(0, eq), strength};
  }
  return {text, 1.0f};
}

bool parse_args(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--help" || arg == "-h") return false;
    if (!has_value) {
      std::fprintf(stderr, "error: %s needs a value\n", arg.c_str());
      return false;
    }
    const std::string value = argv[++i];
    if (arg == "--model") {
      options.model = value;
    } else if (arg == "--data") {
      options.data = value;
    } else if (arg == "--adapter") {
      options.adapters.push_back(parse_adapter(value));
    } else if (arg == "--tokens") {
      if (!parse_tokens(value, options.tokens)) {
        std::fprintf(stderr, "error: --tokens expects comma-separated integers, got %s\n",
                     value.c_str());
        return false;
      }
    } else if (arg == "--show") {
      options.shown_logits = std::atoi(value.c_str());
    } else {
      std::fprintf(stderr, "error: unknown option %s\n", arg.c_str());
      return false;
    }
  }
  if (options.model.empty() || options.data.empty() || options.tokens.empty()) {
    std::fprintf(stderr, "error: --model, --data and --tokens are required\n");
    return false;
  }
  return true;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parse_args(argc, argv, options)) {
    usage();
    return 2;
  }
  auto load_start = std::chrono::steady_clock::now();
  auto session = etlora::Session::open(options.model, options.data);
  if (!session.ok()) {
    std::fprintf(stderr, "error: %s\n", session.status().message().c_str());
    return 1;
  }
  const double load_ms = ms_since(load_start);

  auto adapter_start = std::chrono::steady_clock::now();
  if (auto status = (*session)->set_adapters(options.adapters); !status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.message().c_str());
    return 1;
  }
  const double adapter_ms = ms_since(adapter_start);

  auto run_start = std::chrono::steady_clock::now();
  auto logits = (*session)->logits(options.tokens);
  if (!logits.ok()) {
    std::fprintf(stderr, "error: %s\n", logits.status().message().c_str());
    return 1;
  }
  const double run_ms = ms_since(run_start);

  const std::vector<float>& values = *logits;
  const size_t argmax = std::max_element(values.begin(), values.end()) - values.begin();
  std::printf("argmax: %zu\n", argmax);
  std::printf("logits[:%d]:", options.shown_logits);
  for (int i = 0; i < options.shown_logits && i < static_cast<int>(values.size()); ++i) {
    std::printf(" %.6f", values[i]);
  }
  std::printf("\n");
  std::printf("load: %.1f ms, set_adapters: %.1f ms, run (%zu tokens): %.1f ms\n", load_ms,
              adapter_ms, options.tokens.size(), run_ms);
  return 0;
}
