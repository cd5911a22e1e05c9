// etlora_runner's argument parsing (runner_options.h).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <etlora/chat_commands.h>

#include "runner/runner_options.h"

namespace etlora_runner {

void usage(FILE* stream) {
  std::fprintf(stream,
               "usage: etlora_runner --bundle DIR [--adapter NAME[=strength]]... --prompt TEXT\n"
               "                     [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n"
               "                     [--no-chat-template] [--tokenizer FILE]\n"
               "       etlora_runner --bundle DIR [--adapter NAME[=strength]]... --chat\n"
               "                     (prompts from stdin, one per line; '/adapters a=1,b=0.5' switches,\n"
               "                     '/adapters' alone: none, '/quit' ends)\n"
               "                     [--max-resident-adapters N] [--max-resident-adapter-bytes N]\n"
               "                     (adapter files kept open for a fast switch back; 0: no limit)\n"
               "       etlora_runner --model model.pte --data foundation.ptd\n"
               "                     [--adapter path.ptd[=strength]]... --tokens 1,2,3\n"
               "                     [--show N]\n"
               "       etlora_runner --tokenizer tokenizer.json --encode FILE\n"
               "                     (FILE: one JSON string per line; prints each one's token ids,\n"
               "                     then with the post-processor's special tokens after ' | ')\n"
               "       either form: [--show-cache] (XNNPACK weight cache figures on stderr)\n"
               "                    [--no-weight-cache] (load without the cache)\n"
               "                    [--packed-cache DIR | --no-packed-cache] (packed cache file;\n"
               "                     default DIR: .etlora-cache/ beside model.pte)\n"
               "                    [--map-packed-cache] (keep the packed cache file mapped instead of\n"
               "                     copying its weights into private memory)\n"
               "                    [--pool-spin-us N] (idle thread-pool workers spin N us before\n"
               "                     sleeping; default 1000, 0 saves power)\n"
               "                    [--kernel-path NAME|auto] (vector path of etlora's kernels;\n"
               "                     default: ETLORA_KERNEL_PATH, else the best this CPU runs)\n"
               "                    [--backend auto|xnnpack|htp] (program to run, decided before loading;\n"
               "                     default auto: HTP when the bundle has a program this device runs)\n"
               "                    [--verbose] (ExecuTorch's info lines too; default: its errors only,\n"
               "                     or ETLORA_LOG=info)\n");
}

namespace {

bool parse_number(const std::string& option, const std::string& text, double& value) {
  char* rest = nullptr;
  value = std::strtod(text.c_str(), &rest);
  if (text.empty() || *rest != '\0') {
    std::fprintf(stderr, "error: %s expects a number, got %s\n", option.c_str(), text.c_str());
    return false;
  }
  return true;
}

// Digits only: no sign, no spaces, no overflow.
bool parse_count(const std::string& text, uint64_t& value) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return false;
  errno = 0;
  value = std::strtoull(text.c_str(), nullptr, 10);
  return errno != ERANGE;
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

}  // namespace

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
    if (arg == "--help" || arg == "-h") {
      options.help = true;
      return false;
    }
    if (arg == "--no-chat-template") {
      options.chat_template = false;
      continue;
    }
    if (arg == "--no-packed-cache") {
      options.packed_cache = false;
      continue;
    }
    if (arg == "--map-packed-cache") {
      options.packed_cache_residency = etlora::PackedCacheResidency::kMap;
      continue;
    }
    if (arg == "--verbose") {
      options.verbose = true;
      continue;
    }
    if (arg == "--chat") {
      options.chat = true;
      continue;
    }
    if (arg == "--show-cache" || arg == "--no-weight-cache") {
      (arg == "--show-cache" ? options.show_cache : options.weight_cache) = arg == "--show-cache";
      continue;
    }
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
    } else if (arg == "--packed-cache") {
      options.packed_cache_dir = value;
    } else if (arg == "--kernel-path") {
      options.kernel_path = value;
    } else if (arg == "--backend") {
      auto request = etlora::parse_backend_request(value);
      if (!request.ok()) {
        std::fprintf(stderr, "error: --%s\n", request.status().message().c_str());
        return false;
      }
      options.backend = *request;
    } else if (arg == "--max-resident-adapters") {
      uint64_t number = 0;
      if (!parse_count(value, number)) {
        std::fprintf(stderr, "error: %s expects an integer >= 0, got '%s'\n", arg.c_str(), value.c_str());
        return false;
      }
      options.max_resident_adapters = static_cast<size_t>(number);
    } else if (arg == "--max-resident-adapter-bytes") {
      auto bytes = etlora::parse_byte_size(value);  // the parser `etlora run` uses
      if (!bytes.ok()) {
        std::fprintf(stderr, "error: %s: %s\n", arg.c_str(), bytes.status().message().c_str());
        return false;
      }
      options.max_resident_adapter_bytes = *bytes;
    } else if (arg == "--pool-spin-us") {
      if (!parse_number(arg, value, options.pool_spin_us)) return false;
    } else if (arg == "--bundle") {
      options.bundle = value;
    } else if (arg == "--tokenizer") {
      options.tokenizer = value;
    } else if (arg == "--encode") {
      options.encode_file = value;
    } else if (arg == "--prompt") {
      options.has_prompt = true;
      options.prompt = value;
    } else if (arg == "--max-new-tokens" || arg == "--temperature" || arg == "--top-p" || arg == "--seed") {
      double number = 0;
      if (!parse_number(arg, value, number)) return false;
      if (arg == "--max-new-tokens") options.generation.max_new_tokens = static_cast<int64_t>(number);
      if (arg == "--temperature") options.generation.temperature = static_cast<float>(number);
      if (arg == "--top-p") options.generation.top_p = static_cast<float>(number);
      if (arg == "--seed") options.generation.seed = static_cast<uint64_t>(number);
    } else {
      std::fprintf(stderr, "error: unknown option %s\n", arg.c_str());
      return false;
    }
  }
  const bool files_given = !options.model.empty() || !options.data.empty();
  if (!options.encode_file.empty()) {  // the tokenizer alone, no program
    if (options.tokenizer.empty() || !options.bundle.empty() || files_given) {
      std::fprintf(stderr, "error: --encode takes --tokenizer FILE and no --bundle, --model or --data\n");
      return false;
    }
    return true;
  }
  if (options.bundle.empty() ? options.model.empty() || options.data.empty() : files_given) {
    std::fprintf(stderr, "error: --bundle, or --model and --data, are required (not both)\n");
    return false;
  }
  if (int(options.has_prompt) + int(!options.tokens.empty()) + int(options.chat) != 1) {
    std::fprintf(stderr, "error: give one of --prompt (text generation), --chat (prompts from stdin) "
                         "or --tokens (logits)\n");
    return false;
  }
  if ((options.has_prompt || options.chat) && options.bundle.empty() && options.tokenizer.empty()) {
    std::fprintf(stderr, "error: --prompt and --chat need a tokenizer: --bundle DIR or --tokenizer FILE\n");
    return false;
  }
  return true;
}

}  // namespace etlora_runner
