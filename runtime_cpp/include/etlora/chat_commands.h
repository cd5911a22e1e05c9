// What a user types to the two front ends, parsed in one place: the chat lines of
// `etlora run --chat` and `etlora_runner --chat`, the NAME[=STRENGTH] lists of
// --adapter and /adapters, and the K/M/G byte sizes of the resident budget.
// etlora.cli calls these through the binding, so both tools accept and refuse
// the same text with the same words.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <etlora/session_adapters.h>  // NamedAdapter
#include <etlora/status.h>

namespace etlora {

enum class ChatCommandKind {
  kNothing,      // an empty or blank line
  kPrompt,       // text to answer with the adapters active now
  kSetAdapters,  // "/adapters a=1,b=0.5" ("/adapters" alone: none)
  kQuit,         // "/quit"
};

struct ChatCommand {
  ChatCommandKind kind = ChatCommandKind::kNothing;
  std::string prompt;                   // kPrompt: the line without surrounding blanks
  std::vector<NamedAdapter> adapters;  // kSetAdapters
};

// One line of --chat. An unknown "/command", a malformed or repeated adapter is an error.
StatusOr<ChatCommand> parse_chat_line(const std::string& line);

// "NAME" or "NAME=STRENGTH" (any number: the session refuses one that is not
// finite, naming the adapter); `where` names the option in errors
// (empty: no prefix, for argument parsers that name the option themselves).
StatusOr<NamedAdapter> parse_named_adapter(const std::string& text, const std::string& where);

// Each name once: a repeated name is an error rather than the last strength winning.
Status check_each_adapter_once(const std::vector<NamedAdapter>& adapters, const std::string& where);

// Bytes: digits with an optional K, M or G (powers of 1024, as llama.cpp and dd);
// no sign, no space, no fraction, no overflow.
StatusOr<uint64_t> parse_byte_size(const std::string& text);

// "resident: N adapter file(s), X.XX MB (a, b)": what the front ends print after a switch.
std::string resident_line(const std::vector<std::string>& names, uint64_t bytes);

}  // namespace etlora
