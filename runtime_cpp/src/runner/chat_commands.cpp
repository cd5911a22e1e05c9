#include <etlora/chat_commands.h>

#include <cerrno>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

namespace etlora {
namespace {

const char kAdaptersCommand[] = "/adapters";

std::string trimmed(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

// Python's repr of a plain string, so that both front ends quote alike.
std::string quoted(const std::string& text) {
  const char quote = text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : text) {
    if (c == '\\' || c == quote) out += '\\';
    out += c;
  }
  return out + quote;
}

}  // namespace

StatusOr<NamedAdapter> parse_named_adapter(const std::string& text, const std::string& where) {
  const size_t eq = text.find('=');
  NamedAdapter choice{text.substr(0, eq), 1.0f};
  bool valid = !choice.name.empty();
  if (valid && eq != std::string::npos) {
    const std::string number = trimmed(text.substr(eq + 1));
    // Any number, nan and inf included: whether a strength is finite is the
    // session's rule (it names the adapter), not the parser's.
    char* rest = nullptr;
    const double strength = number.empty() ? 0.0 : std::strtod(number.c_str(), &rest);
    valid = !number.empty() && *rest == '\0';
    choice.strength = static_cast<float>(strength);
  }
  if (!valid) {
    return Status(StatusCode::kInvalidArgument, (where.empty() ? "" : where + ": ") +
                                                    "expected NAME or NAME=STRENGTH, received " +
                                                    quoted(text));
  }
  return choice;
}

Status check_each_adapter_once(const std::vector<NamedAdapter>& adapters, const std::string& where) {
  std::set<std::string> seen, twice;
  for (const NamedAdapter& adapter : adapters) {
    if (!seen.insert(adapter.name).second) twice.insert(adapter.name);
  }
  if (twice.empty()) return Status::ok_status();
  std::string names;
  for (const std::string& name : twice) names += (names.empty() ? "" : ", ") + quoted(name);
  const bool option = where == "--adapter";
  return Status(StatusCode::kInvalidArgument, where + ": expected each adapter once, received " + names + " more than once (hint: " +
                       (option ? "one --adapter " : "") + *twice.begin() + "=STRENGTH" + (option ? "" : " once") +
                       ")");
}

StatusOr<ChatCommand> parse_chat_line(const std::string& line) {
  ChatCommand command;
  const std::string text = trimmed(line);
  if (text.empty()) return command;
  if (text == "/quit") {
    command.kind = ChatCommandKind::kQuit;
    return command;
  }
  const size_t name_end = text.find_first_of(" \t");
  if (text.compare(0, name_end, kAdaptersCommand) == 0) {
    command.kind = ChatCommandKind::kSetAdapters;
    const std::string list = name_end == std::string::npos ? "" : text.substr(name_end);
    size_t start = 0;
    while (start < list.size()) {
      size_t end = list.find(',', start);
      if (end == std::string::npos) end = list.size();
      const std::string item = trimmed(list.substr(start, end - start));
      start = end + 1;
      if (item.empty()) continue;
      auto choice = parse_named_adapter(item, kAdaptersCommand);
      if (!choice.ok()) return choice.status();
      command.adapters.push_back(*choice);
    }
    if (Status once = check_each_adapter_once(command.adapters, kAdaptersCommand); !once.ok()) return once;
    return command;
  }
  if (text[0] == '/') {
    return Status(StatusCode::kInvalidArgument, "unknown command " + text + " (expected /adapters NAME[=STRENGTH],... or /quit)");
  }
  command.kind = ChatCommandKind::kPrompt;
  command.prompt = text;
  return command;
}

StatusOr<uint64_t> parse_byte_size(const std::string& text) {
  uint64_t scale = 1;
  std::string digits = text;
  const char last = text.empty() ? '\0' : static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  if (last == 'K' || last == 'M' || last == 'G') {
    scale = last == 'K' ? (1ull << 10) : last == 'M' ? (1ull << 20) : (1ull << 30);
    digits.pop_back();
  }
  bool valid = !digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos;
  unsigned long long number = 0;
  if (valid) {
    errno = 0;
    number = std::strtoull(digits.c_str(), nullptr, 10);
    valid = errno != ERANGE && number <= UINT64_MAX / scale;
  }
  if (!valid) {
    return Status(StatusCode::kInvalidArgument, "expected a size in bytes >= 0 (suffix K, M or G allowed), received " + quoted(text));
  }
  return static_cast<uint64_t>(number * scale);
}

std::string resident_line(const std::vector<std::string>& names, uint64_t bytes) {
  std::string listed;
  for (const std::string& name : names) listed += (listed.empty() ? "" : ", ") + name;
  char size[64];
  std::snprintf(size, sizeof size, "%.2f MB", static_cast<double>(bytes) / 1e6);
  return "resident: " + std::to_string(names.size()) + " adapter file(s), " + size +
         (listed.empty() ? "" : " (" + listed + ")");
}

}  // namespace etlora
