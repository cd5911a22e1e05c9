// etlora_runner: run an etlora bundle from the command line.
//
//   etlora_runner --bundle DIR [--adapter NAME[=strength]]... --prompt "text"
//                 [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
//                 [--no-chat-template]
//     streams the generated text to stdout, then prints prefill and decode
//     speed to stderr. Files by convention: DIR/model.pte, DIR/foundation.ptd,
//     DIR/tokenizer/tokenizer.json, DIR/adapters/NAME.ptd.
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
//
// This file: setting up the process, opening what was asked for (a bundle
// through etlora::LoadedBundle, or program files), and running it. Arguments
// are in runner_args.cpp, printing in runner_output.cpp, --chat in runner_chat.cpp.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <etlora/bundle.h>
#include <etlora/htp_facts_json.h>
#include <etlora/htp_probe.h>
#include <etlora/kernel_path.h>
#include <etlora/loaded_bundle.h>
#include <etlora/logging.h>
#include <etlora/running_program.h>
#include <etlora/session.h>
#include <etlora/thread_pool.h>
#include <etlora/tokenizer.h>

#include "runner/runner_chat.h"
#include "runner/runner_options.h"
#include "runner/runner_output.h"

namespace etlora_runner {

namespace {

// The test hook (runtime_cpp/README.md): the device facts from a JSON file
// instead of the probe, so that tests on a machine without an NPU take the htp
// branch with an XNNPACK stand-in as model_htp.pte. It replaces the probe (no
// QNN library is dlopened, ETLORA_SOC is not read) and nothing else:
// choose_backend still decides, and LoadedBundle refuses a program that uses
// QnnBackend under facts that were not probed.
constexpr const char* kTestFactsVariable = "ETLORA_TEST_HTP_FACTS";

// The facts from the hook's file, or nullopt (probe the device).
etlora::StatusOr<std::optional<etlora::HtpFacts>> test_facts() {
  const char* path = std::getenv(kTestFactsVariable);
  if (path == nullptr || *path == '\0') return std::optional<etlora::HtpFacts>();
  auto facts = etlora::read_htp_facts_file(path, std::string(kTestFactsVariable) + "=" + path);
  if (!facts.ok()) return facts.status();
  std::fprintf(stderr,
               "warning: device facts from %s=%s (test hook: the device was not probed; a program that "
               "uses QnnBackend is refused)\n",
               kTestFactsVariable, path);
  return std::optional<etlora::HtpFacts>(*facts);
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

// Something opened: the program, the tokenizer if asked for, and how the
// adapters given on the command line or in --chat are bound.
struct Opened {
  std::unique_ptr<etlora::LoadedBundle> bundle;    // --bundle
  std::unique_ptr<etlora::RunningProgram> files;   // --model / --data
  etlora::RunningProgram* program = nullptr;
  std::shared_ptr<etlora::Tokenizer> tokenizer;
  SwitchAdapters switch_adapters;
};

// An adapter on the command line is a bundle's adapter name unless it looks like a path.
bool looks_like_path(const std::string& given) {
  return given.find('/') != std::string::npos || (given.size() > 4 && given.substr(given.size() - 4) == ".ptd");
}

// --bundle: the manifest, the backend decided and printed before anything is
// loaded, then the bundle opened by its owner (sizes, fingerprint, names).
etlora::StatusOr<Opened> open_bundle(const Options& options, const std::optional<etlora::HtpFacts>& facts) {
  auto bundle = etlora::Bundle::open(options.bundle);
  if (!bundle.ok()) return bundle.status();
  etlora::LoadOptions load;
  load.backend = options.backend;
  load.facts = facts;
  load.facts_source = kTestFactsVariable;
  load.weight_cache = options.weight_cache;
  load.packed_cache = options.packed_cache;
  load.packed_cache_dir = options.packed_cache_dir;
  load.packed_cache_residency = options.packed_cache_residency;
  load.max_resident_adapters = options.max_resident_adapters;
  load.max_resident_adapter_bytes = options.max_resident_adapter_bytes;
  auto choice = etlora::LoadedBundle::choose(*bundle, load);
  if (!choice.ok()) return choice.status();
  std::fprintf(stderr, "%s\n", choice->line().c_str());
  load.decided = *choice;
  auto loaded = etlora::LoadedBundle::open(std::move(*bundle), load);
  if (!loaded.ok()) return loaded.status();
  etlora::LoadedBundle& opened_bundle = **loaded;
  if (!opened_bundle.packed_cache_warning().empty()) {
    std::fprintf(stderr, "warning: %s\n", opened_bundle.packed_cache_warning().c_str());
  }
  if (const etlora::HtpSession* htp = opened_bundle.htp_session()) {
    const etlora::HtpProgram& entry = *opened_bundle.bundle().htp_program();
    std::fprintf(stderr, "htp program: %s (chunk_len %lld, cache_len %lld, foundation %s)\n", entry.path.c_str(),
                 static_cast<long long>(htp->htp_info().chunk_len), static_cast<long long>(htp->htp_info().cache_len),
                 entry.foundation_in_context_bytes == 0 ? opened_bundle.bundle().foundation_path().c_str()
                                                        : "inside the program");
  }
  Opened opened;
  opened.program = &opened_bundle.program();
  if (options.has_prompt || options.chat) {
    if (options.tokenizer.empty()) {
      auto tokenizer = opened_bundle.tokenizer();
      if (!tokenizer.ok()) return tokenizer.status();
      opened.tokenizer = *tokenizer;
    } else {  // --tokenizer FILE in place of the bundle's
      auto tokenizer = etlora::load_tokenizer_for(options.tokenizer, opened_bundle.info());
      if (!tokenizer.ok()) return tokenizer.status();
      opened.tokenizer = std::move(*tokenizer);
    }
  }
  // Names go through the bundle's owner (its name lookup, slot and strength
  // rules, errors naming the adapter); a path given among them binds that file.
  etlora::LoadedBundle* owner = &opened_bundle;
  opened.switch_adapters = [owner](const std::vector<etlora::AdapterChoice>& given) -> etlora::Status {
    const bool any_path = std::any_of(given.begin(), given.end(),
                                      [](const etlora::AdapterChoice& choice) { return looks_like_path(choice.path); });
    if (!any_path) {
      std::vector<etlora::NamedAdapter> named;
      for (const etlora::AdapterChoice& choice : given) named.push_back({choice.path, choice.strength});
      return owner->set_adapters(named);
    }
    std::vector<etlora::AdapterChoice> files = given;
    for (etlora::AdapterChoice& choice : files) {
      if (looks_like_path(choice.path)) continue;
      auto path = owner->bundle().adapter_path(choice.path);
      if (!path.ok()) return path.status();
      choice.path = *path;
    }
    return owner->set_adapter_files(files);
  };
  opened.bundle = std::move(*loaded);
  return opened;
}

// --model / --data: program files without a manifest, always model.pte's layout.
etlora::StatusOr<Opened> open_files(const Options& options, const std::optional<etlora::HtpFacts>& facts) {
  auto choice = etlora::choose_backend(options.backend, facts ? *facts : etlora::gather_htp_facts(), std::nullopt);
  if (!choice.ok()) return choice.status();
  std::fprintf(stderr, "%s\n", choice->line().c_str());
  etlora::SessionOptions session_options;
  session_options.weight_cache = options.weight_cache;
  session_options.packed_cache_residency = options.packed_cache_residency;
  session_options.max_resident_adapters = options.max_resident_adapters;
  session_options.max_resident_adapter_bytes = options.max_resident_adapter_bytes;
  if (options.packed_cache && options.weight_cache) {
    // An optimisation, never a reason to fail: an unusable folder turns it off with one warning.
    auto weights_id = etlora::read_foundation_weights_id(options.model);
    if (weights_id.ok()) {  // else Session::open reports the program's problem
      auto path = etlora::packed_cache_path(dir_of(options.model), options.packed_cache_dir, *weights_id);
      if (path.ok()) {
        session_options.packed_cache_path = *path;
      } else {
        std::fprintf(stderr, "warning: packed cache off: %s\n", path.status().message().c_str());
      }
    }
  }
  auto session = etlora::Session::open(options.model, options.data, session_options);
  if (!session.ok()) return session.status();
  Opened opened;
  opened.files = etlora::running_program(std::move(*session));
  opened.program = opened.files.get();
  if (options.has_prompt || options.chat) {
    auto tokenizer = etlora::load_tokenizer_for(options.tokenizer, opened.program->info());
    if (!tokenizer.ok()) return tokenizer.status();
    opened.tokenizer = std::move(*tokenizer);
  }
  etlora::RunningProgram* program = opened.program;
  opened.switch_adapters = [program](const std::vector<etlora::AdapterChoice>& given) {
    return program->set_adapters(given);
  };
  return opened;
}

// After opening: the adapters, then --prompt, --chat or --tokens.
int run(Opened& opened, const Options& options, double load_ms) {
  etlora::RunningProgram& program = *opened.program;
  if (options.show_cache) show_cache(program);
  const auto adapter_start = std::chrono::steady_clock::now();
  if (etlora::Status bound = opened.switch_adapters(options.adapters); !bound.ok()) {
    std::fprintf(stderr, "error: --adapter: %s\n", bound.message().c_str());
    return 1;
  }
  const double adapter_ms = ms_since(adapter_start);
  if (options.has_prompt) return generate_text(program, *opened.tokenizer, options.prompt, options, false);
  if (options.chat) {
    etlora::LoadedBundle* bundle = opened.bundle.get();
    const ResidentNames resident_names = [bundle, &program] {
      return bundle ? bundle->resident_adapters() : resident_file_names(program);
    };
    return run_chat(program, *opened.tokenizer, opened.switch_adapters, resident_names, options);
  }
  const auto run_start = std::chrono::steady_clock::now();
  auto logits = program.forward(options.tokens, 0);
  if (!logits.ok()) {
    std::fprintf(stderr, "error: %s\n", logits.status().message().c_str());
    return 1;
  }
  print_logits(program, *logits, options, load_ms, adapter_ms, ms_since(run_start));
  return 0;
}

}  // namespace

}  // namespace etlora_runner

int main(int argc, char** argv) {
  using namespace etlora_runner;
  Options options;
  if (!parse_args(argc, argv, options)) {
    usage(options.help ? stdout : stderr);
    return options.help ? 0 : 2;
  }
  if (!options.encode_file.empty()) {  // the tokenizer alone: no thread pool, no program
    auto tokenizer = etlora::Tokenizer::load(options.tokenizer);
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "error: %s\n", tokenizer.status().message().c_str());
      return 1;
    }
    return encode_lines(**tokenizer, options.encode_file);
  }
  const auto load_start = std::chrono::steady_clock::now();
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
  auto facts = test_facts();
  if (!facts.ok()) {
    std::fprintf(stderr, "error: %s\n", facts.status().message().c_str());
    return 2;
  }
  auto opened = options.bundle.empty() ? open_files(options, *facts) : open_bundle(options, *facts);
  if (!opened.ok()) {
    std::fprintf(stderr, "error: %s\n", opened.status().message().c_str());
    return 1;
  }
  return run(*opened, options, ms_since(load_start));
}
