// The adapter side both sessions share (Session and HtpSession derive from
// SessionAdapters): which adapter files are bound to the slots, which stay
// open, and what the KV cache holds, through one registry (adapter_registry.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <etlora/status.h>

namespace etlora {

// An adapter to activate: its file and how strongly to apply it.
struct AdapterChoice {
  std::string path;
  float strength = 1.0f;
};

// The same by a bundle's adapter name (LoadedBundle::set_adapters, what users type).
struct NamedAdapter {
  std::string name;
  float strength = 1.0f;
};

struct SessionAdapterState;  // src/session/session_adapters.h: the registry and the cache history

class SessionAdapters {
 public:
  // Points the adapter inputs of `forward` at these files (at most
  // adapter_slots; the remaining slots get zeros and scale 0). A file is
  // opened and checked against the program (AdapterFile::check_for_program)
  // the first time it is named; later calls only re-point the inputs of the
  // slots that changed. Everything is checked before anything changes, so a
  // failure leaves the previous adapters active. Never reloads the program or
  // the foundation. The same file twice, or a strength that is not finite,
  // is an error.
  Status set_adapters(const std::vector<AdapterChoice>& adapters);

  // Adapters currently bound to the slots, in slot order.
  const std::vector<AdapterChoice>& active_adapters() const;

  // Paths of the adapter files this session holds open, most recently bound
  // first (max_resident_adapters and _bytes bound them), and their file sizes
  // together, what the resident budget in bytes counts.
  std::vector<std::string> resident_adapter_paths() const;
  uint64_t resident_adapter_bytes() const;

  // Closes every open adapter file that no slot binds (their pages are
  // unmapped unless another session holds the same file); returns how many.
  size_t release_unbound_adapters();

  // How many leading positions of the KV cache a prefill of `prompt` can keep,
  // at most prompt.size() - 1: positions whose tokens equal the prompt's and
  // whose K/V was computed with the adapters and strengths bound now (a switch
  // makes every position an adapter touched stale). With an activated LoRA
  // bound, only positions no adapter touched and before its activation start
  // for this prompt (the invocation's start): they hold the foundation's K/V,
  // which any adapter would have computed there too. Exact either way.
  int64_t reusable_prefix(const std::vector<int64_t>& prompt) const;

 protected:
  SessionAdapters();
  ~SessionAdapters();
  std::unique_ptr<SessionAdapterState> adapters_;  // set by the session's open
};

}  // namespace etlora
