// etlora_runner's command line: what it asks for, and the parser.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <etlora/generator.h>
#include <etlora/htp_probe.h>
#include <etlora/packed_cache.h>
#include <etlora/session.h>
#include <etlora/thread_pool.h>

namespace etlora_runner {

struct Options {
  bool help = false;  // --help: usage on stdout, exit 0
  bool verbose = false;  // --verbose: ExecuTorch's info lines too
  std::string bundle;
  std::string model;
  std::string data;
  std::string tokenizer;
  std::string encode_file;  // --encode: JSON strings, one per line, to token ids (no program)
  std::vector<etlora::AdapterChoice> adapters;  // as given: a bundle's adapter name, or a path
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
  etlora::GenerationOptions generation;
};

// The usage text, on `stream`.
void usage(FILE* stream);

// Reads argv into `options`; false after printing the problem on stderr (or on --help).
bool parse_args(int argc, char** argv, Options& options);

// "name", "name=0.5", "path.ptd" or "path.ptd=0.5"; a trailing "=x" that is not a number stays in the name.
etlora::AdapterChoice parse_adapter(const std::string& text);

}  // namespace etlora_runner
