// etlora_runner --chat (runner_chat.h): lines parsed by etlora::parse_chat_line,
// the parser `etlora run --chat` uses too.
#include "runner/runner_chat.h"

#include <cstdio>
#include <iostream>

#include <etlora/chat_commands.h>

#include "runner/runner_output.h"

namespace etlora_runner {

int run_chat(etlora::RunningProgram& program, const etlora::Tokenizer& tok, const SwitchAdapters& switch_adapters,
             const ResidentNames& resident_names, const Options& options) {
  int status = 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    auto command = etlora::parse_chat_line(line);
    if (!command.ok()) {
      std::fprintf(stderr, "error: %s\n", command.status().message().c_str());
      status = 1;
      continue;
    }
    if (command->kind == etlora::ChatCommandKind::kQuit) break;
    if (command->kind == etlora::ChatCommandKind::kPrompt) {
      if (generate_text(program, tok, command->prompt, options, /*reuse_prefix=*/true) != 0) status = 1;
      continue;
    }
    if (command->kind != etlora::ChatCommandKind::kSetAdapters) continue;
    std::vector<etlora::AdapterChoice> given;
    for (const etlora::NamedAdapter& adapter : command->adapters) given.push_back({adapter.name, adapter.strength});
    if (etlora::Status switched = switch_adapters(given); !switched.ok()) {
      std::fprintf(stderr, "error: %s\n", switched.message().c_str());
      status = 1;
      continue;
    }
    std::fprintf(stderr, "adapters: %zu active | %s\n", given.size(),
                 etlora::resident_line(resident_names(), program.resident_adapter_bytes()).c_str());
  }
  return status;
}

}  // namespace etlora_runner
