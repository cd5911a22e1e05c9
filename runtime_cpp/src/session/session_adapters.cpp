// SessionAdapters: the calls both sessions answer the same way.
#include <etlora/session_adapters.h>

#include <exception>

#include "session/session_adapters.h"

namespace etlora {

SessionAdapters::SessionAdapters() = default;
SessionAdapters::~SessionAdapters() = default;

Status SessionAdapters::set_adapters(const std::vector<AdapterChoice>& adapters) {
  try {  // no exception leaves the C++ API (an allocation can still fail)
    auto changed = adapters_->registry.set_adapters(adapters, adapters_->bind);
    if (!changed.ok()) return changed.status();
    if (*changed) adapters_->history.adapters_changed();
    return Status::ok_status();
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, std::string("set_adapters: ") + error.what());
  }
}

const std::vector<AdapterChoice>& SessionAdapters::active_adapters() const { return adapters_->registry.active(); }

std::vector<std::string> SessionAdapters::resident_adapter_paths() const {
  return adapters_->registry.resident_paths();
}

uint64_t SessionAdapters::resident_adapter_bytes() const { return adapters_->registry.resident_bytes(); }

size_t SessionAdapters::release_unbound_adapters() { return adapters_->registry.release_unbound(); }

int64_t SessionAdapters::reusable_prefix(const std::vector<int64_t>& prompt) const {
  const int64_t count = static_cast<int64_t>(prompt.size());
  return adapters_->history.reusable_prefix(prompt.data(), count,
                                            adapters_->registry.activation_starts(prompt.data(), count),
                                            adapters_->registry.any_activated());
}

}  // namespace etlora
