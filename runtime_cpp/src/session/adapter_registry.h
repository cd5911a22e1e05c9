// The adapters of one loaded program, shared by Session and HtpSession: the
// files opened (each checked against the program once), which ones stay open
// (the residency budget), which slot binds which file at what scale, and where
// an activated LoRA starts applying.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include "etlora/adapter_file.h"
#include "etlora/program_info.h"
#include "etlora/session.h"  // AdapterChoice
#include "etlora/status.h"

namespace etlora {

// "Never": an activation start for a slot whose adapter does not apply.
constexpr int64_t kNeverActive = std::numeric_limits<int64_t>::max();

// An adapter file opened, checked against the program and turned into the
// 2 * sites method inputs it binds to any slot: checked once, bound many times.
struct OpenAdapter {
  std::string path;  // as the caller named it
  std::shared_ptr<const AdapterFile> file;
  std::vector<executorch::extension::TensorPtr> inputs;  // lora_a, lora_b per site
  struct stat identity {};  // of the path when opened: a rewritten file is opened again
  uint64_t last_used = 0;
};

// How many unbound adapter files stay open for a fast switch back (0 = no
// limit); the bound ones are always kept. Both limits apply.
struct ResidencyBudget {
  size_t max_adapters = 0;
  uint64_t max_bytes = 0;
};

// A run of positions [begin, end) with the slot scales it runs at: an
// activated LoRA's slot is 0 before its activation start.
struct Segment {
  int64_t begin = 0;
  int64_t end = 0;
  std::vector<float> scales;  // per slot
  bool any_adapter = false;   // some slot's scale is nonzero here
};

class AdapterRegistry {
 public:
  // Points one slot's inputs at `inputs` (the session knows its input indexes).
  using BindSlot = std::function<Status(int64_t slot, const std::vector<executorch::extension::TensorPtr>&)>;

  // `program_label` names the program in errors ("program X", "HTP program X");
  // `absent` backs the LoRA inputs of absent sites and empty slots (zeros of at
  // least largest site * max_rank floats) and must outlive the registry.
  AdapterRegistry(const ProgramInfo& info, std::string program_path, std::string program_label,
                  const float* absent, ResidencyBudget budget);

  // Binds every slot empty (at open).
  Status bind_empty(const BindSlot& bind);

  // Checks the choice (slot count, finite strengths), opens and checks each
  // file it has not open already, refuses the same file twice, then re-points
  // only the slots that changed. A failure leaves the previous binding active.
  // Returns whether any slot's file or scale changed.
  StatusOr<bool> set_adapters(const std::vector<AdapterChoice>& adapters, const BindSlot& bind);

  const std::vector<AdapterChoice>& active() const { return active_; }
  // strength * scaling per slot (0 for an empty slot).
  const std::vector<float>& base_scales() const { return base_scales_; }

  // Where each slot's adapter starts applying among tokens[0, count): 0 for an
  // ordinary adapter, the start of the last occurrence of an activated LoRA's
  // invocation tokens (PEFT's calculate_alora_offsets), kNeverActive for an
  // empty slot, a zero scale or an absent invocation.
  std::vector<int64_t> activation_starts(const int64_t* tokens, int64_t count) const;
  // Whether a bound adapter is an activated LoRA.
  bool any_activated() const;

  // Positions [start_pos, end) of `history` (the token at every position up to
  // end) cut at the activation starts: one segment per run of equal scales.
  std::vector<Segment> segments(const int64_t* history, int64_t start_pos, int64_t end) const;

  // Paths of the open files, most recently bound first, and their sizes together.
  std::vector<std::string> resident_paths() const;
  uint64_t resident_bytes() const;
  // Closes every open file no slot binds; returns how many.
  size_t release_unbound();

 private:
  StatusOr<const OpenAdapter*> open(const std::string& path);
  bool is_bound(const OpenAdapter* adapter) const;
  Status bind_changed(const std::vector<const OpenAdapter*>& previous, const BindSlot& bind);
  void enforce_budget();

  const ProgramInfo& info_;
  std::string program_path_;
  std::string program_label_;
  const float* absent_;
  ResidencyBudget budget_;
  std::vector<executorch::extension::TensorPtr> empty_slot_;  // 2 per site over absent_
  // The file open at each path, and files since rewritten on disk that a slot
  // still binds (closed as soon as no slot does).
  std::unordered_map<std::string, std::unique_ptr<OpenAdapter>> by_path_;
  std::vector<std::unique_ptr<OpenAdapter>> replaced_;
  std::vector<const OpenAdapter*> bound_;  // per slot; nullptr = empty
  std::vector<float> base_scales_;
  std::vector<AdapterChoice> active_;
  uint64_t use_clock_ = 0;
};

// The BindSlot of a program whose forward takes each slot's 2 * site_count
// LoRA inputs from index first_input on, slot after slot (model.pte and
// model_htp.pte alike); `program_label` names the program in errors.
AdapterRegistry::BindSlot slot_binder(executorch::extension::module::Module& module, size_t first_input,
                                      size_t site_count, std::string program_label);

}  // namespace etlora
