// What etlora_runner prints: generated text and its speed line, logits and
// timings, the cache figures, the resident adapters.
#pragma once

#include <string>
#include <vector>

#include <etlora/running_program.h>
#include <etlora/tokenizer.h>

#include "runner/runner_options.h"

namespace etlora_runner {

// Text in, streamed text out on stdout, the speed line on stderr; 0, or 1 after printing the error.
int generate_text(etlora::RunningProgram& program, const etlora::Tokenizer& tok, const std::string& text,
                  const Options& options, bool reuse_prefix);

// --encode: each line of `path` (a JSON string) as its ids, then ' | ' and its ids with special
// tokens, on stdout; 0, or 1 after printing the error (the line number of a bad line).
int encode_lines(const etlora::Tokenizer& tok, const std::string& path);

// --tokens: the argmax and the first logits on stdout with the load, switch and run times.
void print_logits(const etlora::RunningProgram& program, const std::vector<float>& values, const Options& options,
                  double load_ms, double adapter_ms, double run_ms);

// --show-cache: the XNNPACK weight cache and packed cache file figures on stderr.
void show_cache(const etlora::RunningProgram& program);

// The names of the adapter files the program holds open (--model mode, no bundle names).
std::vector<std::string> resident_file_names(const etlora::RunningProgram& program);

}  // namespace etlora_runner
