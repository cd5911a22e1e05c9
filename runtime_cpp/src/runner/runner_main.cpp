// etlora_runner: run an etlora bundle from the command line.
//
//   etlora_runner --bundle DIR [--adapter NAME[=strength]]... --prompt "text"
//                 [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
//                 [--no-chat-template]
//     streams the generated text to stdout, then prints prefill and decode
//     speed to stderr. Files by convention: DIR/model.pte, DIR/foundation.ptd,
//     DIR/tokenizer/etlora_tokenizer.txt, DIR/adapters/NAME.ptd.
//
//   etlora_runner --model model.pte --data foundation.ptd
//                 [--adapter path.ptd[=strength]]... --tokens 1,2,3
//     prints the argmax token and the first logits, with load and run times.
//
//   Either form: [--backend auto|xnnpack|htp] decides the program before anything
//     is loaded (etlora/htp_probe.h) and prints "backend: xnnpack (reason)" on
//     stderr; htp that cannot run is an error, never a silent fallback. When the
//     answer is htp, the bundle's model_htp.pte runs in an HtpSession (KV cache on
//     the host), through the same adapter, generation and logits code as model.pte.
//
//   Test hook, not in --help (runtime_cpp/README.md): ETLORA_TEST_HTP_FACTS=FILE.json
//     replaces the device probe with the seven facts in FILE (nothing is dlopened),
//     and then a program that uses QnnBackend is refused before it is loaded.
//
//   Either form: [--packed-cache DIR | --no-packed-cache] keeps XNNPACK's
//     packed foundation weights in DIR (default: .etlora-cache/ beside
//     model.pte) so later starts map them instead of packing again, then
//     copy them into private memory ([--map-packed-cache]: keep the mapping);
//     [--show-cache] prints the cache figures on stderr.
//
//   etlora_runner --bundle DIR --chat [--max-resident-adapters N]
//                 [--max-resident-adapter-bytes N]
//     one prompt per line of stdin, each answered with the adapters active then;
//     a line "/adapters a=1,b=0.5" switches them ("/adapters" alone: none) and
//     prints which adapter files stay open, "/quit" ends. The KV cache's exact
//     prefix is kept from one prompt to the next (an activated LoRA's shared
//     system prompt); the budgets close the least recently used adapter files.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <etlora/bundle.h>
#include <etlora/generator.h>
#include <etlora/htp_probe.h>
#include <etlora/htp_session.h>
#include <etlora/session.h>
#include <etlora/kernel_path.h>
#include <etlora/logging.h>
#include <etlora/thread_pool.h>
#include <etlora/tokenizer.h>
#include <executorch/extension/module/module.h>

#include "format/json.h"

namespace {

struct Options {
  bool help = false;  // --help: usage on stdout, exit 0
  bool verbose = false;  // --verbose: ExecuTorch's info lines too
  bool bad_bundle = false;  // --bundle named something Bundle::open refused (error already printed)
  std::string bundle;
  std::optional<etlora::Bundle> bundle_reader;  // the --bundle manifest, read once (names -> paths)
  std::string model;
  std::string data;
  std::string tokenizer;
  std::vector<etlora::AdapterChoice> adapters;
  std::vector<int64_t> tokens;
  int shown_logits = 8;
  bool has_prompt = false;
  std::string prompt;
  bool chat = false;  // --chat: prompts and /adapters lines from stdin
  size_t max_resident_adapters = 0;
  uint64_t max_resident_adapter_bytes = 0;
  bool chat_template = true;
  bool show_cache = false;
  bool weight_cache = true;
  bool packed_cache = true;
  std::string packed_cache_dir;  // empty: .etlora-cache/ beside model.pte
  etlora::PackedCacheResidency packed_cache_residency = etlora::PackedCacheResidency::kCopy;
  double pool_spin_us = etlora::ThreadPoolOptions{}.worker_spin_us;
  std::string kernel_path;  // empty: ETLORA_KERNEL_PATH or auto
  etlora::BackendRequest backend = etlora::BackendRequest::kAuto;
  std::optional<etlora::HtpProgram> htp_program;  // the bundle's HTP program (--bundle only)
  etlora::GenerationOptions generation;
};

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
               "       either form: [--show-cache] (XNNPACK weight cache figures on stderr)\n"
               "                    [--no-weight-cache] (load without the cache)\n"
               "                    [--packed-cache DIR | --no-packed-cache] (packed foundation file;\n"
               "                     default DIR: .etlora-cache/ beside model.pte)\n"
               "                    [--map-packed-cache] (keep the packed file mapped instead of\n"
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

bool parse_number(const std::string& option, const std::string& text, double& value) {
  char* rest = nullptr;
  value = std::strtod(text.c_str(), &rest);
  if (text.empty() || *rest != '\0') {
    std::fprintf(stderr, "error: %s expects a number, got %s\n", option.c_str(), text.c_str());
    return false;
  }
  return true;
}

// An adapter is a bundle's adapter name unless it looks like a path.
etlora::Status resolve_adapter(const etlora::Bundle& bundle, etlora::AdapterChoice& adapter) {
  const bool is_path = adapter.path.find('/') != std::string::npos ||
                       (adapter.path.size() > 4 && adapter.path.substr(adapter.path.size() - 4) == ".ptd");
  if (is_path) return etlora::Status::ok_status();
  auto path = bundle.adapter_path(adapter.path);
  if (!path.ok()) return path.status();
  adapter.path = *path;
  return etlora::Status::ok_status();
}

// In bundle mode the manifest says where everything is (etlora::Bundle, the same
// reader the Python binding uses); an adapter is a name unless it looks like a path.
bool resolve_bundle_paths(Options& options) {
  auto bundle = etlora::Bundle::open(options.bundle);
  if (!bundle.ok()) {
    std::fprintf(stderr, "error: %s\n", bundle.status().message().c_str());
    return false;
  }
  if (options.model.empty()) options.model = bundle->program_path();
  if (options.data.empty()) options.data = bundle->foundation_path();
  if (options.tokenizer.empty()) options.tokenizer = bundle->tokenizer_path();
  options.htp_program = bundle->htp_program();
  for (auto& adapter : options.adapters) {
    if (etlora::Status named = resolve_adapter(*bundle, adapter); !named.ok()) {
      std::fprintf(stderr, "error: --adapter: %s\n", named.message().c_str());
      return false;
    }
  }
  options.bundle_reader.emplace(std::move(*bundle));  // --chat's /adapters names resolve here too
  return true;
}

// Digits only, with an optional K, M or G (powers of 1024, as `etlora run`) when
// `suffixes`; no sign, no spaces, no overflow.
bool parse_size(const std::string& text, bool suffixes, uint64_t& value) {
  uint64_t scale = 1;
  std::string digits = text;
  const char last = text.empty() ? '\0' : static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  if (suffixes && (last == 'K' || last == 'M' || last == 'G')) {
    scale = last == 'K' ? (1ull << 10) : last == 'M' ? (1ull << 20) : (1ull << 30);
    digits.pop_back();
  }
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  errno = 0;
  const unsigned long long number = std::strtoull(digits.c_str(), nullptr, 10);
  if (errno == ERANGE || number > UINT64_MAX / scale) return false;
  value = number * scale;
  return true;
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
    } else if (arg == "--max-resident-adapters" || arg == "--max-resident-adapter-bytes") {
      const bool bytes = arg == "--max-resident-adapter-bytes";
      uint64_t number = 0;
      if (!parse_size(value, /*suffixes=*/bytes, number)) {
        std::fprintf(stderr, "error: %s expects %s, got '%s'\n", arg.c_str(),
                     bytes ? "a size in bytes >= 0 (suffix K, M or G allowed)" : "an integer >= 0", value.c_str());
        return false;
      }
      if (bytes) options.max_resident_adapter_bytes = number;
      else options.max_resident_adapters = static_cast<size_t>(number);
    } else if (arg == "--pool-spin-us") {
      if (!parse_number(arg, value, options.pool_spin_us)) return false;
    } else if (arg == "--bundle") {
      options.bundle = value;
    } else if (arg == "--tokenizer") {
      options.tokenizer = value;
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
  if (!options.bundle.empty() && !resolve_bundle_paths(options)) {
    options.bad_bundle = true;
    return false;
  }
  if (options.model.empty() || options.data.empty()) {
    std::fprintf(stderr, "error: --bundle, or --model and --data, are required\n");
    return false;
  }
  if (int(options.has_prompt) + int(!options.tokens.empty()) + int(options.chat) != 1) {
    std::fprintf(stderr, "error: give one of --prompt (text generation), --chat (prompts from stdin) "
                         "or --tokens (logits)\n");
    return false;
  }
  if ((options.has_prompt || options.chat) && options.tokenizer.empty()) {
    std::fprintf(stderr, "error: --prompt and --chat need a tokenizer: --bundle DIR or --tokenizer FILE\n");
    return false;
  }
  return true;
}

// The tokenizer, checked against the program's vocabulary; nullptr after printing why not.
template <typename AnySession>
std::unique_ptr<etlora::Tokenizer> load_tokenizer(const AnySession& session, const Options& options) {
  auto tokenizer = etlora::Tokenizer::load(options.tokenizer);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "error: %s\n", tokenizer.status().message().c_str());
    return nullptr;
  }
  if ((*tokenizer)->vocab_size() > session.info().vocab_size) {
    std::fprintf(stderr,
                 "error: tokenizer %s has %lld tokens, the program's vocabulary %lld (hint: tokenizer "
                 "from another model?)\n",
                 options.tokenizer.c_str(), static_cast<long long>((*tokenizer)->vocab_size()),
                 static_cast<long long>(session.info().vocab_size));
    return nullptr;
  }
  return std::move(*tokenizer);
}

// Text in, streamed text out, speed on stderr. Session or HtpSession: the same
// etlora::generate loop (generator.h) over either.
template <typename AnySession>
int generate_text(AnySession& session, const etlora::Tokenizer& tok, const std::string& text,
                  const Options& options, bool reuse_prefix) {
  const std::vector<int64_t> prompt = tok.encode_prompt(text, options.chat_template);
  etlora::GenerationOptions generation = options.generation;
  generation.eos_ids = tok.eos_ids();
  generation.reuse_prefix = reuse_prefix;
  etlora::TokenTextStream stream(tok);
  etlora::Status stream_error;
  auto result = etlora::generate(session, prompt, generation, [&](int64_t token) {
    auto text = stream.push(token);
    if (!text.ok()) {
      stream_error = text.status();
      return false;
    }
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::fflush(stdout);
    return true;
  });
  const std::string rest = stream.finish();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::printf("\n");
  std::fflush(stdout);  // the text before the stats line on a shared terminal
  if (!result.ok() || !stream_error.ok()) {
    std::fprintf(stderr, "error: %s\n", (result.ok() ? stream_error : result.status()).message().c_str());
    return 1;
  }
  const etlora::GenerationStats& stats = result->stats;
  std::fprintf(stderr,
               "prefill: %lld tokens, %.1f tok/s%s | decode: %lld tokens, %.1f tok/s | stop: %s | "
               "kernel path: %s\n",
               static_cast<long long>(stats.prompt_tokens), stats.prefill_tokens_per_second(),
               reuse_prefix ? (", " + std::to_string(stats.reused_tokens) + " kept from the cache").c_str() : "",
               static_cast<long long>(stats.generated_tokens), stats.decode_tokens_per_second(),
               stats.stop_reason.c_str(), etlora::kernel_path().value().c_str());
  return 0;
}

template <typename AnySession>
int run_prompt(AnySession& session, const Options& options) {
  auto tok = load_tokenizer(session, options);
  return tok ? generate_text(session, *tok, options.prompt, options, /*reuse_prefix=*/false) : 1;
}

// What stays open after a switch: the Session's adapter files (the budgets bound
// them); the HTP session keeps only the bound ones.
std::string resident_line(const etlora::Session& session) {
  const std::vector<std::string> paths = session.resident_adapter_paths();
  std::string names;
  for (const std::string& path : paths) {
    const size_t slash = path.rfind('/');
    names += (names.empty() ? "" : ", ") + path.substr(slash == std::string::npos ? 0 : slash + 1);
  }
  char bytes[64];
  std::snprintf(bytes, sizeof bytes, "%.2f MB", session.resident_adapter_bytes() / 1e6);
  return "resident: " + std::to_string(paths.size()) + " adapter file(s), " + bytes +
         (names.empty() ? "" : " (" + names + ")");
}
std::string resident_line(const etlora::HtpSession& session) {
  return "resident: " + std::to_string(session.active_adapters().size()) + " adapter file(s), the bound ones";
}

std::string trimmed(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r") - first + 1);
}

// "/adapters a=1, b=0.5" -> choices with bundle paths; "" -> none.
etlora::StatusOr<std::vector<etlora::AdapterChoice>> parse_adapter_line(const std::string& list,
                                                                      const Options& options) {
  std::vector<etlora::AdapterChoice> choices;
  size_t start = 0;
  while (start < list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const std::string item = trimmed(list.substr(start, end - start));
    start = end + 1;
    if (item.empty()) continue;
    etlora::AdapterChoice choice = parse_adapter(item);
    if (options.bundle_reader) {
      if (etlora::Status named = resolve_adapter(*options.bundle_reader, choice); !named.ok()) return named;
    }
    choices.push_back(choice);
  }
  return choices;
}

// --chat: each stdin line a prompt, or a command. A bad command or a failed
// generation is reported and the loop goes on (the session is unchanged by a
// refused switch); the exit status is 1 if anything failed.
template <typename AnySession>
int run_chat(AnySession& session, const Options& options) {
  auto tok = load_tokenizer(session, options);
  if (!tok) return 1;
  int status = 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    const std::string text = trimmed(line);
    if (text.empty()) continue;
    if (text == "/quit") break;
    if (text == "/adapters" || text.rfind("/adapters ", 0) == 0) {
      auto choices = parse_adapter_line(text.substr(std::string("/adapters").size()), options);
      etlora::Status switched = choices.ok() ? session.set_adapters(*choices) : choices.status();
      if (!switched.ok()) {
        std::fprintf(stderr, "error: %s\n", switched.message().c_str());
        status = 1;
        continue;
      }
      std::fprintf(stderr, "adapters: %zu active | %s\n", choices->size(), resident_line(session).c_str());
      continue;
    }
    if (text[0] == '/') {
      std::fprintf(stderr, "error: unknown command %s (expected /adapters NAME[=STRENGTH],... or /quit)\n",
                   text.c_str());
      status = 1;
      continue;
    }
    if (generate_text(session, *tok, text, options, /*reuse_prefix=*/true) != 0) status = 1;
  }
  return status;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

// The packed file's full path, or "" (off) with a one-line warning when the
// folder cannot be made; the cache is an optimisation, never a reason to fail.
std::string packed_cache_path(const Options& options) {
  if (!options.packed_cache || !options.weight_cache) return "";
  auto weights_id = etlora::read_foundation_weights_id(options.model);
  if (!weights_id.ok()) return "";  // Session::open reports the program's problem
  auto path = etlora::packed_cache_path(dir_of(options.model), options.packed_cache_dir, *weights_id);
  if (!path.ok()) {
    std::fprintf(stderr, "warning: packed cache off: %s\n", path.status().message().c_str());
    return "";
  }
  return *path;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// One line on stderr: the backend's cache options and the process's memory.
void show_cache(const etlora::Session& session) {
  auto stats = etlora::weight_cache_stats();
  if (!stats.ok()) {
    std::fprintf(stderr, "weight cache: %s\n", stats.status().message().c_str());
    return;
  }
  const double mib = 1024.0 * 1024.0;
  std::fprintf(stderr,
               "weight cache: this session %s (backend default %s), workspace sharing %d, sessions %lld, "
               "load added %.1f MiB anon | process rss %.1f MiB (anon %.1f, file %.1f)\n",
               session.weight_cache() ? "on" : "off", stats->default_enabled ? "on" : "off",
               stats->workspace_sharing_mode,
               static_cast<long long>(stats->open_sessions), session.load_anon_bytes() / mib,
               stats->rss_bytes / mib, stats->rss_anon_bytes / mib, stats->rss_file_bytes / mib);
  const etlora::PackedCacheInfo& packed = session.packed_cache();
  if (packed.source == etlora::PackedCacheSource::kOff) {
    std::fprintf(stderr, "packed cache: off | load %.3f s\n", packed.load_seconds);
    return;
  }
  std::fprintf(stderr,
               "packed cache: %s %s (%lld entries, file %.1f MiB, mapped %.1f MiB, copied into "
               "memory %.1f MiB) | load %.3f s (check %.3f s, copy %.3f s)%s%s\n",
               etlora::packed_cache_source_name(packed.source), packed.path.c_str(),
               static_cast<long long>(packed.file_entries), packed.file_bytes / mib,
               packed.mapped_bytes / mib, packed.copied_bytes / mib, packed.load_seconds,
               packed.check_seconds, packed.copy_seconds,
               packed.note.empty() ? "" : " | ",
               packed.note.c_str());
}

// What the HTP session adds to the run line (the chunks of T the call took).
std::string run_detail(const etlora::Session&) { return ""; }
std::string run_detail(const etlora::HtpSession& session) {
  return ", " + std::to_string(session.last_chunks()) + " chunk(s) of " +
         std::to_string(session.htp_info().chunk_len);
}

// After the session is open, Session or HtpSession alike: the adapters, then
// --prompt (generation) or --tokens (the last token's logits).
template <typename AnySession>
int run_session(AnySession& session, const Options& options, double load_ms) {
  auto adapter_start = std::chrono::steady_clock::now();
  if (auto status = session.set_adapters(options.adapters); !status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.message().c_str());
    return 1;
  }
  const double adapter_ms = ms_since(adapter_start);
  if (options.has_prompt) return run_prompt(session, options);
  if (options.chat) return run_chat(session, options);

  auto run_start = std::chrono::steady_clock::now();
  auto logits = session.logits(options.tokens);
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
  std::printf("load: %.1f ms, set_adapters: %.1f ms, run (%zu tokens%s): %.1f ms\n", load_ms,
              adapter_ms, options.tokens.size(), run_detail(session).c_str(), run_ms);
  std::printf("kernel path: %s\n", etlora::kernel_path().value().c_str());
  return 0;
}

// The device facts choose_backend decides on: the probe of this device, or the
// test hook's file. The hook (ETLORA_TEST_HTP_FACTS, runtime_cpp/README.md) lets
// tests on a machine without an NPU take the htp branch with an XNNPACK stand-in
// as model_htp.pte. It replaces the probe (no QNN library is dlopened, ETLORA_SOC
// is not read) and nothing else: choose_backend still decides, and
// open_htp_session refuses a program that uses QnnBackend while it is in effect,
// so faked facts can never hand a QNN payload to a device that may not run it.
constexpr const char* kTestFactsVariable = "ETLORA_TEST_HTP_FACTS";
constexpr const char* kQnnBackendName = "QnnBackend";  // ExecuTorch's Qualcomm backend id
constexpr size_t kMaxTestFactsBytes = 64 * 1024;

struct DeviceFacts {
  etlora::HtpFacts facts;
  std::string test_file;  // the hook's file when the facts came from it, else ""
};

etlora::StatusOr<etlora::HtpFacts> read_test_facts(const std::string& path) {
  using etlora::JsonValue;
  using etlora::Status;
  using etlora::StatusCode;
  const std::string where = std::string(kTestFactsVariable) + "=" + path;
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return Status(StatusCode::kNotFound, where + ": cannot be read (expected a JSON file with the seven "
                                                 "device facts; unset the variable to probe the device)");
  }
  std::string text;
  text.resize(kMaxTestFactsBytes + 1);
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(file.gcount()));
  if (text.size() > kMaxTestFactsBytes) {
    return Status(StatusCode::kInvalidArgument,
                  where + ": expected at most " + std::to_string(kMaxTestFactsBytes) + " bytes, received more");
  }
  auto json = etlora::parse_json(text, where);
  if (!json.ok()) return json.status();
  if (!json->is(JsonValue::Kind::kObject)) {
    return Status(StatusCode::kInvalidArgument, where + ": expected a JSON object, received " +
                                                    JsonValue::kind_name(json->kind()));
  }
  static const char* const kKeys[] = {"htp_library_loadable", "htp_library_error", "system_library_loadable",
                                      "system_library_error", "dsp_device", "soc", "soc_source"};
  std::string key_list;
  for (const char* key : kKeys) key_list += (key_list.empty() ? "" : ", ") + std::string(key);
  for (const auto& entry : json->object()) {
    const std::string& key = entry.first;  // a plain name: C++17 lambdas cannot capture bindings
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return key == k; }) ==
        std::end(kKeys)) {
      return Status(StatusCode::kInvalidArgument,
                    where + ": expected only the keys " + key_list + ", received '" + key + "'");
    }
  }
  Status problem;
  auto member = [&](const char* key, JsonValue::Kind kind) -> const JsonValue* {
    const JsonValue* value = json->find(key);
    if (value == nullptr && problem.ok()) {
      problem = Status(StatusCode::kInvalidArgument, where + ": expected a '" + key + "' key, received none");
    } else if (value != nullptr && !value->is(kind) && problem.ok()) {
      problem = Status(StatusCode::kInvalidArgument, where + ": '" + key + "' expected " +
                                                         JsonValue::kind_name(kind) + ", received " +
                                                         JsonValue::kind_name(value->kind()));
    }
    return problem.ok() ? value : nullptr;
  };
  etlora::HtpFacts facts;
  auto read_bool = [&](const char* key, bool& out) {
    if (const JsonValue* value = member(key, JsonValue::Kind::kBool)) out = value->boolean();
  };
  auto read_string = [&](const char* key, std::string& out) {
    if (const JsonValue* value = member(key, JsonValue::Kind::kString)) out = value->string();
  };
  read_bool("htp_library_loadable", facts.htp_library.loadable);
  read_string("htp_library_error", facts.htp_library.error);
  read_bool("system_library_loadable", facts.system_library.loadable);
  read_string("system_library_error", facts.system_library.error);
  read_string("dsp_device", facts.dsp_device);
  read_string("soc", facts.soc);
  read_string("soc_source", facts.soc_source);
  if (!problem.ok()) return problem;
  return facts;
}

etlora::StatusOr<DeviceFacts> device_facts() {
  const char* test_file = std::getenv(kTestFactsVariable);
  if (test_file == nullptr || *test_file == '\0') return DeviceFacts{etlora::gather_htp_facts(), ""};
  auto facts = read_test_facts(test_file);
  if (!facts.ok()) return facts.status();
  std::fprintf(stderr,
               "warning: device facts from %s=%s (test hook: the device was not probed; a program that "
               "uses %s is refused)\n",
               kTestFactsVariable, test_file, kQnnBackendName);
  return DeviceFacts{*facts, test_file};
}

// The backends forward delegates to, read from the program's header alone
// (ExecuTorch's Program::load and MethodMeta: no method is loaded, no backend
// initialised).
etlora::StatusOr<std::vector<std::string>> program_backends(const std::string& path) {
  using executorch::extension::module::Module;
  Module module(path, Module::LoadMode::Mmap);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) {
    return etlora::Status(etlora::StatusCode::kIncompatible,
                          "HTP program " + path + ": forward's metadata cannot be read (ExecuTorch error " +
                              std::to_string(static_cast<int>(meta.error())) + ")");
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < meta->num_backends(); ++i) {
    auto name = meta->get_backend_name(i);
    if (name.ok()) names.emplace_back(*name);
  }
  return names;
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "none" : out;
}

// The bundle's model_htp.pte in an HtpSession: foundation.ptd unless the program
// carries its own weights, chunk and cache lengths as the manifest says (the
// Python session's _open_htp does the same). Only after choose_backend said htp.
etlora::StatusOr<std::unique_ptr<etlora::HtpSession>> open_htp_session(const Options& options,
                                                                      const DeviceFacts& facts) {
  const etlora::HtpProgram& htp = *options.htp_program;
  if (!facts.test_file.empty()) {
    auto backends = program_backends(htp.path);
    if (!backends.ok()) return backends.status();
    if (std::find(backends->begin(), backends->end(), kQnnBackendName) != backends->end()) {
      return etlora::Status(
          etlora::StatusCode::kIncompatible,
          std::string(kTestFactsVariable) + ": expected a stand-in HTP program with faked device facts, received " +
              htp.path + ", which delegates to " + joined(*backends) + " (hint: the facts were not probed, so a "
              "QNN program is never run under them; unset " + kTestFactsVariable + " on a device)");
    }
  }
  const std::string foundation = htp.foundation_in_context_bytes == 0 ? options.data : "";
  auto session = etlora::HtpSession::open(htp.path, foundation);
  if (!session.ok()) return session.status();
  const etlora::HtpProgramInfo& info = (*session)->htp_info();
  if (info.chunk_len != htp.chunk_len || info.cache_len != htp.cache_len) {
    return etlora::Status(etlora::StatusCode::kIncompatible,
                          htp.path + ": chunk_len " + std::to_string(info.chunk_len) + ", cache_len " +
                              std::to_string(info.cache_len) + "; manifest htp_program says " +
                              std::to_string(htp.chunk_len) + ", " + std::to_string(htp.cache_len) +
                              " (hint: files from different exports)");
  }
  std::fprintf(stderr, "htp program: %s (chunk_len %lld, cache_len %lld, foundation %s)\n", htp.path.c_str(),
               static_cast<long long>(info.chunk_len), static_cast<long long>(info.cache_len),
               foundation.empty() ? "inside the program" : foundation.c_str());
  return session;
}

// --show-cache for the HTP session: XNNPACK's weight cache and the packed file are model.pte's.
void show_cache(const etlora::HtpSession&) {
  std::fprintf(stderr, "weight cache: not used by the HTP session | packed cache: off (model.pte only)\n");
}

// Either backend's session, once opened: the load time, --show-cache, then the run.
template <typename AnySession>
int run_opened(etlora::StatusOr<std::unique_ptr<AnySession>> session, const Options& options,
               std::chrono::steady_clock::time_point load_start) {
  if (!session.ok()) {
    std::fprintf(stderr, "error: %s\n", session.status().message().c_str());
    return 1;
  }
  const double load_ms = ms_since(load_start);
  if (options.show_cache) show_cache(**session);
  return run_session(**session, options, load_ms);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parse_args(argc, argv, options)) {
    if (options.bad_bundle) return 1;  // not a usage error: the message says what is wrong
    usage(options.help ? stdout : stderr);
    return options.help ? 0 : 2;
  }
  auto load_start = std::chrono::steady_clock::now();
  if (options.verbose) etlora::set_runtime_log_verbose(true);
  etlora::install_runtime_log_filter();
  etlora::ThreadPoolOptions pool_options;
  pool_options.worker_spin_us = options.pool_spin_us;
  if (etlora::Status pool = etlora::configure_thread_pool(pool_options); !pool.ok()) {
    std::fprintf(stderr, "error: %s\n", pool.message().c_str());
    return 2;
  }
  if (!options.kernel_path.empty()) {
    if (etlora::Status path = etlora::select_kernel_path(options.kernel_path); !path.ok()) {
      std::fprintf(stderr, "error: --kernel-path: %s\n", path.message().c_str());
      return 2;
    }
  }
  // Decided before anything is loaded: QnnBackend crashes on a program it cannot
  // run, so only a program the probe cleared may ever reach it. This runner has
  // an HTP session, so a bundle's model_htp.pte runs when the device clears it.
  auto facts = device_facts();
  if (!facts.ok()) {
    std::fprintf(stderr, "error: %s\n", facts.status().message().c_str());
    return 2;
  }
  std::optional<etlora::HtpProgramFacts> htp_program;
  if (options.htp_program) htp_program = etlora::HtpProgramFacts{options.htp_program->soc, options.htp_program->path};
  auto backend = etlora::choose_backend(options.backend, facts->facts, htp_program,
                                        /*htp_session_available=*/true);
  if (!backend.ok()) {
    std::fprintf(stderr, "error: %s\n", backend.status().message().c_str());
    return 1;
  }
  std::fprintf(stderr, "%s\n", backend->line().c_str());
  if (backend->backend == etlora::Backend::kHtp) {
    return run_opened(open_htp_session(options, *facts), options, load_start);
  }
  etlora::SessionOptions session_options;
  session_options.weight_cache = options.weight_cache;
  session_options.packed_cache_path = packed_cache_path(options);
  session_options.packed_cache_residency = options.packed_cache_residency;
  session_options.max_resident_adapters = options.max_resident_adapters;
  session_options.max_resident_adapter_bytes = options.max_resident_adapter_bytes;
  return run_opened(etlora::Session::open(options.model, options.data, session_options), options, load_start);
}
