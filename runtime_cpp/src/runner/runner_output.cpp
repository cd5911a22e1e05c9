// etlora_runner's printing (runner_output.h).
#include "runner/runner_output.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <etlora/kernel_path.h>
#include <etlora/session.h>

#include "format/json.h"

namespace etlora_runner {

int encode_lines(const etlora::Tokenizer& tok, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "error: --encode %s: not found or not readable\n", path.c_str());
    return 1;
  }
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    auto text = etlora::parse_json(line, path + ":" + std::to_string(number));
    if (!text.ok() || !text->is(etlora::JsonValue::Kind::kString)) {
      std::fprintf(stderr, "error: %s:%d: expected a JSON string, got %s\n", path.c_str(), number,
                   text.ok() ? etlora::JsonValue::kind_name(text->kind()) : text.status().message().c_str());
      return 1;
    }
    for (bool special : {false, true}) {
      if (special) std::fputs(" |", stdout);
      for (int64_t id : tok.encode(text->string(), special)) std::printf(" %lld", static_cast<long long>(id));
    }
    std::fputc('\n', stdout);
  }
  return 0;
}

int generate_text(etlora::RunningProgram& program, const etlora::Tokenizer& tok, const std::string& text,
                  const Options& options, bool reuse_prefix) {
  const std::vector<int64_t> prompt = tok.encode_prompt(text, options.chat_template);
  etlora::GenerationOptions generation = options.generation;
  generation.eos_ids = tok.eos_ids();
  generation.reuse_prefix = reuse_prefix;
  etlora::TokenTextStream stream(tok);
  etlora::Status stream_error;
  auto result = program.generate(prompt, generation, [&](int64_t token) {
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

void print_logits(const etlora::RunningProgram& program, const std::vector<float>& values, const Options& options,
                  double load_ms, double adapter_ms, double run_ms) {
  const size_t argmax = std::max_element(values.begin(), values.end()) - values.begin();
  std::printf("argmax: %zu\n", argmax);
  std::printf("logits[:%d]:", options.shown_logits);
  for (int i = 0; i < options.shown_logits && i < static_cast<int>(values.size()); ++i) {
    std::printf(" %.6f", values[i]);
  }
  std::printf("\n");
  // The HTP session adds the chunks of T the call took.
  std::string detail;
  if (const etlora::HtpSession* htp = program.htp_session()) {
    detail = ", " + std::to_string(htp->last_chunks()) + " chunk(s) of " + std::to_string(htp->htp_info().chunk_len);
  }
  std::printf("load: %.1f ms, set_adapters: %.1f ms, run (%zu tokens%s): %.1f ms\n", load_ms, adapter_ms,
              options.tokens.size(), detail.c_str(), run_ms);
  std::printf("kernel path: %s\n", etlora::kernel_path().value().c_str());
}

void show_cache(const etlora::RunningProgram& program) {
  const etlora::Session* running = program.session();
  if (running == nullptr) {  // XNNPACK's weight cache and the packed cache file are model.pte's
    std::fprintf(stderr, "weight cache: not used by the HTP session | packed cache: off (model.pte only)\n");
    return;
  }
  const etlora::Session& session = *running;
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

std::vector<std::string> resident_file_names(const etlora::RunningProgram& program) {
  std::vector<std::string> names;
  for (const std::string& path : program.resident_adapter_paths()) {
    const size_t slash = path.rfind('/');
    names.push_back(path.substr(slash == std::string::npos ? 0 : slash + 1));
  }
  return names;
}

}  // namespace etlora_runner
