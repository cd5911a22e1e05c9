// etlora_runner --chat: prompts and commands from stdin over one loaded program.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <etlora/running_program.h>
#include <etlora/status.h>
#include <etlora/tokenizer.h>

#include "runner/runner_options.h"

namespace etlora_runner {

// Binds adapters as typed: each a bundle's adapter name or a path to an adapter file.
using SwitchAdapters = std::function<etlora::Status(const std::vector<etlora::AdapterChoice>&)>;

// The adapter files held open, as the resident line names them (a bundle's
// adapter names, else the files' names).
using ResidentNames = std::function<std::vector<std::string>()>;

// Each stdin line a prompt, or "/adapters a=1,b=0.5" (a switch), or "/quit". A
// bad command or a failed generation is reported and the loop goes on (a
// refused switch leaves the program unchanged); returns 1 if anything failed.
int run_chat(etlora::RunningProgram& program, const etlora::Tokenizer& tok, const SwitchAdapters& switch_adapters,
             const ResidentNames& resident_names, const Options& options);

}  // namespace etlora_runner
