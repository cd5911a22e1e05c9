// What SessionAdapters holds (include/etlora/session_adapters.h).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "session/adapter_registry.h"
#include "session/cache_history.h"

namespace etlora {

struct SessionAdapterState {
  // The registry's arguments (AdapterRegistry's constructor) and the cache's positions.
  SessionAdapterState(AdapterRegistry::BindSlot bind_slot, const ProgramInfo& info, const std::string& program_path,
                      const std::string& program_label, const float* absent, ResidencyBudget budget,
                      int64_t positions)
      : bind(std::move(bind_slot)), registry(info, program_path, program_label, absent, budget), history(positions) {}
  AdapterRegistry::BindSlot bind;  // re-points one slot's LoRA inputs of forward
  AdapterRegistry registry;
  CacheHistory history;  // what the program's KV cache holds
};

}  // namespace etlora
