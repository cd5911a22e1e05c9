// AdapterRegistry: opening, keeping, binding and gating the adapters of one program.
#include "session/adapter_registry.h"

#include <algorithm>
#include <utility>

#include "format/format_util.h"
#include "session/program_constants.h"

namespace etlora {

using executorch::extension::TensorPtr;

namespace {

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

// The start of the last occurrence of `invocation` in tokens[0, count), 0 for
// an ordinary adapter (no invocation), kNeverActive when absent.
int64_t activation_start(const std::vector<int64_t>& invocation, const int64_t* tokens, int64_t count) {
  if (invocation.empty()) return 0;
  const int64_t length = static_cast<int64_t>(invocation.size());
  for (int64_t start = count - length; start >= 0; --start) {
    if (std::equal(invocation.begin(), invocation.end(), tokens + start)) return start;
  }
  return kNeverActive;
}

}  // namespace

AdapterRegistry::AdapterRegistry(const ProgramInfo& info, std::string program_path,
                                 std::string program_label, const float* absent, ResidencyBudget budget)
    : info_(info),
      program_path_(std::move(program_path)),
      program_label_(std::move(program_label)),
      absent_(absent),
      budget_(budget),
      empty_slot_(lora_inputs(info, nullptr, absent)),
      bound_(info.adapter_slots, nullptr),
      base_scales_(info.adapter_slots, 0.0f) {}

Status AdapterRegistry::bind_empty(const BindSlot& bind) {
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    bound_[slot] = nullptr;
    base_scales_[slot] = 0.0f;
    if (Status bound = bind(slot, empty_slot_); !bound.ok()) return bound;
  }
  active_.clear();
  return Status::ok_status();
}

StatusOr<const OpenAdapter*> AdapterRegistry::open(const std::string& path) {
  struct stat identity {};
  const bool exists = ::stat(path.c_str(), &identity) == 0;
  auto found = by_path_.find(path);
  if (found != by_path_.end() && exists && same_file(found->second->identity, identity)) {
    return found->second.get();
  }
  auto opened = AdapterFile::open(path);
  if (!opened.ok()) return opened.status();
  if (Status fits = (*opened)->check_for_program(info_, program_path_); !fits.ok()) return fits;
  auto adapter = std::make_unique<OpenAdapter>();
  adapter->path = path;
  adapter->file = *opened;
  adapter->identity = identity;
  adapter->inputs = lora_inputs(info_, adapter->file.get(), absent_);
  if (found != by_path_.end()) {
    // The file at this path changed since it was opened: a slot may still bind
    // the old one, which stays alive (same address) until no slot does.
    if (is_bound(found->second.get())) replaced_.push_back(std::move(found->second));
    found->second = std::move(adapter);
    return found->second.get();
  }
  return by_path_.emplace(path, std::move(adapter)).first->second.get();
}

StatusOr<bool> AdapterRegistry::set_adapters(const std::vector<AdapterChoice>& adapters, const BindSlot& bind) {
  if (Status valid = check_adapter_choices(adapters, info_, program_label_); !valid.ok()) return valid;
  // Open and check everything first so that a bad choice leaves the binding unchanged.
  std::vector<const OpenAdapter*> chosen;
  std::vector<const AdapterFile*> files;
  for (const AdapterChoice& choice : adapters) {
    auto adapter = open(choice.path);
    if (!adapter.ok()) return adapter.status();
    const AdapterFile* file = (*adapter)->file.get();
    if (Status once = check_file_not_chosen(file, files, adapters); !once.ok()) return once;
    files.push_back(file);
    chosen.push_back(*adapter);
  }
  const std::vector<const OpenAdapter*> previous = bound_;
  const std::vector<float> previous_scales = base_scales_;
  bool changed = false;
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    const OpenAdapter* adapter = slot < static_cast<int64_t>(chosen.size()) ? chosen[slot] : nullptr;
    const float scale = adapter ? adapters[slot].strength * adapter->file->scaling() : 0.0f;
    changed = changed || adapter != previous[slot] || scale != base_scales_[slot];
    base_scales_[slot] = scale;
    bound_[slot] = adapter;
  }
  if (Status bound = bind_changed(previous, bind); !bound.ok()) {
    // Put the previous adapters back, inputs too: those slots were bound before.
    const std::vector<const OpenAdapter*> attempted = bound_;
    bound_ = previous;
    base_scales_ = previous_scales;
    (void)bind_changed(attempted, bind);
    return bound;
  }
  for (const OpenAdapter* adapter : chosen) const_cast<OpenAdapter*>(adapter)->last_used = ++use_clock_;
  active_.assign(adapters.begin(), adapters.end());
  enforce_budget();
  return changed;
}

Status AdapterRegistry::bind_changed(const std::vector<const OpenAdapter*>& previous, const BindSlot& bind) {
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    if (previous[slot] == bound_[slot]) continue;
    if (Status bound = bind(slot, bound_[slot] ? bound_[slot]->inputs : empty_slot_); !bound.ok()) {
      return bound;
    }
  }
  return Status::ok_status();
}

bool AdapterRegistry::is_bound(const OpenAdapter* adapter) const {
  return std::find(bound_.begin(), bound_.end(), adapter) != bound_.end();
}

void AdapterRegistry::enforce_budget() {
  replaced_.erase(std::remove_if(replaced_.begin(), replaced_.end(),
                                 [&](const auto& adapter) { return !is_bound(adapter.get()); }),
                  replaced_.end());
  auto over_budget = [&] {
    const bool too_many = budget_.max_adapters != 0 && by_path_.size() > budget_.max_adapters;
    const bool too_large = budget_.max_bytes != 0 && resident_bytes() > budget_.max_bytes;
    return too_many || too_large;
  };
  while (over_budget()) {
    auto oldest = by_path_.end();
    for (auto it = by_path_.begin(); it != by_path_.end(); ++it) {
      if (is_bound(it->second.get())) continue;
      if (oldest == by_path_.end() || it->second->last_used < oldest->second->last_used) oldest = it;
    }
    if (oldest == by_path_.end()) return;  // every open adapter is bound
    by_path_.erase(oldest);  // unmaps the file unless another session holds it
  }
}

size_t AdapterRegistry::release_unbound() {
  size_t released = 0;
  for (auto it = by_path_.begin(); it != by_path_.end();) {
    if (is_bound(it->second.get())) {
      ++it;
    } else {
      it = by_path_.erase(it);
      ++released;
    }
  }
  return released;
}

uint64_t AdapterRegistry::resident_bytes() const {
  uint64_t bytes = 0;
  for (const auto& [path, adapter] : by_path_) bytes += static_cast<uint64_t>(adapter->identity.st_size);
  for (const auto& adapter : replaced_) bytes += static_cast<uint64_t>(adapter->identity.st_size);
  return bytes;
}

std::vector<std::string> AdapterRegistry::resident_paths() const {
  std::vector<std::pair<uint64_t, std::string>> by_use;
  for (const auto& [path, adapter] : by_path_) by_use.emplace_back(adapter->last_used, path);
  std::sort(by_use.rbegin(), by_use.rend());
  std::vector<std::string> paths;
  for (auto& [used, path] : by_use) paths.push_back(std::move(path));
  return paths;
}

std::vector<int64_t> AdapterRegistry::activation_starts(const int64_t* tokens, int64_t count) const {
  std::vector<int64_t> starts(info_.adapter_slots, kNeverActive);
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    if (bound_[slot] != nullptr && base_scales_[slot] != 0.0f) {
      starts[slot] = activation_start(bound_[slot]->file->alora_invocation_tokens(), tokens, count);
    }
  }
  return starts;
}

bool AdapterRegistry::any_activated() const {
  return std::any_of(bound_.begin(), bound_.end(), [](const OpenAdapter* adapter) {
    return adapter && !adapter->file->alora_invocation_tokens().empty();
  });
}

std::vector<Segment> AdapterRegistry::segments(const int64_t* history, int64_t start_pos, int64_t end) const {
  const std::vector<int64_t> starts = activation_starts(history, end);
  std::vector<int64_t> cuts = {start_pos, end};
  for (int64_t start : starts) {
    if (start > start_pos && start < end) cuts.push_back(start);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Segment> segments;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    Segment segment{cuts[c], cuts[c + 1], std::vector<float>(info_.adapter_slots, 0.0f), false};
    for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
      const bool active = starts[slot] <= cuts[c];
      segment.scales[slot] = active ? base_scales_[slot] : 0.0f;
      segment.any_adapter = segment.any_adapter || active;
    }
    segments.push_back(std::move(segment));
  }
  return segments;
}

AdapterRegistry::BindSlot slot_binder(executorch::extension::module::Module& module, size_t first_input,
                                      size_t site_count, std::string program_label) {
  return [&module, first_input, site_count, label = std::move(program_label)](
             int64_t slot, const std::vector<TensorPtr>& inputs) -> Status {
    for (size_t k = 0; k < 2 * site_count; ++k) {
      const size_t index = first_input + slot * 2 * site_count + k;
      if (auto err = module.set_input("forward", *inputs[k], index); err != executorch::runtime::Error::Ok) {
        return Status(StatusCode::kRuntimeError,
                      label + ": ExecuTorch refused adapter input " + std::to_string(index) + " (" +
                          error_name(err) + "); hint: the program's input layout differs from its constant methods");
      }
    }
    return Status::ok_status();
  };
}

}  // namespace etlora
