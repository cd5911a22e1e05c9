// HtpSession: runs an HTP-shaped etlora program (model_htp.pte, bundle-format.md
// "model_htp.pte") with the KV cache kept on the host.
//
// The HTP program is a pure function of fixed-size tensors: a chunk of T
// tokens, their positions, an additive attention mask [1, T, C + T], the K and
// V caches [L, kv_heads, C, head_dim] as inputs, the adapter scales and LoRA
// tensors; it returns the logits of every position and the chunk's new K/V
// rows. This session owns the cache and every input buffer, splits a call's
// tokens into chunks of T (the last one padded, padding positions clamped to
// C - 1, as export/htp_model.py's HostKVCache does), builds the mask (and the
// sliding-window mask of a model with sliding-window layers), runs the method
// and writes the real rows back into the cache.
//
// On a phone the program is the QNN-compiled one; everywhere else the same
// layout lowered to XNNPACK (export/htp_program.py lower_htp_shaped) runs
// through this class, which is how it is tested. Like Session, an HtpSession
// is not thread-safe: use one per thread, or lock around it.
//
// It never hands a program to ExecuTorch's QnnBackend on its own judgement:
// the caller decides with choose_backend (htp_probe.h) first, because
// QnnBackend crashes on a payload it cannot run rather than refusing it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <etlora/program_info.h>
#include <etlora/session_adapters.h>
#include <etlora/status.h>

namespace etlora {

// The HTP program layouts this runtime reads (etlora_format_version of model_htp.pte): 1, and 2,
// which adds etlora_sliding_window and, when it is > 0, a sliding_mask input.
constexpr int64_t kOldestHtpFormatVersion = 1;
constexpr int64_t kHtpFormatVersion = 2;

// What the HTP program's constant methods and input shapes say beyond ProgramInfo.
struct HtpProgramInfo {
  int64_t chunk_len = 0;   // T: tokens per run of `forward` (etlora_chunk_len)
  int64_t cache_len = 0;   // C: cache rows (etlora_cache_len)
  int64_t sliding_window = 0;  // W of the sliding-window layers, 0: none (etlora_sliding_window)
  int64_t num_layers = 0;  // L, from the k_cache input's shape
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// How many adapter files an HtpSession keeps open (SessionOptions has the same two).
struct HtpSessionOptions {
  size_t max_resident_adapters = 0;        // 0 = keep every adapter ever opened
  uint64_t max_resident_adapter_bytes = 0;  // 0 = no byte limit; bound ones always kept
};

class HtpSession : public SessionAdapters {
 public:
  // Loads the program and its foundation (both memory-mapped), reads and
  // checks the constant methods (etlora_program_kind must be "htp") and the
  // shapes of forward's inputs and outputs against them. An empty
  // foundation_path loads the program alone (a program that carries its
  // foundation, as QNN context binaries do). No adapter is active and the
  // cache is empty until set_adapters() / forward().
  static StatusOr<std::unique_ptr<HtpSession>> open(const std::string& program_path,
                                                   const std::string& foundation_path,
                                                   const HtpSessionOptions& options = {});

  // ProgramInfo as adapters are checked against it; max_seq_len is the cache length C.
  const ProgramInfo& info() const { return info_; }
  const HtpProgramInfo& htp_info() const { return htp_; }
  const std::string& program_path() const { return program_path_; }

  // set_adapters, active_adapters, resident_adapter_paths / _bytes,
  // release_unbound_adapters, reusable_prefix: SessionAdapters, as Session's
  // (the cache is on the host, with the same bookkeeping).

  // Runs `tokens` at positions start_pos.. (appending to the cache: rows
  // 0 .. start_pos-1 are what earlier calls wrote) and returns the logits of
  // the last one (vocab_size floats). start_pos + tokens must be <= cache_len.
  // An activated LoRA applies from its activation start on, as in Session:
  // the call runs in segments cut there, each as its own chunks.
  StatusOr<std::vector<float>> forward(const std::vector<int64_t>& tokens, int64_t start_pos);

  // forward() from position 0: a fresh prefill.
  StatusOr<std::vector<float>> logits(const std::vector<int64_t>& tokens) {
    return forward(tokens, 0);
  }

  // How many runs of `forward` the last forward() call took (ceil(tokens / T)
  // per segment).
  int64_t last_chunks() const { return last_chunks_; }

  ~HtpSession();

 private:
  struct Impl;  // ExecuTorch objects and the host buffers, kept out of this header
  HtpSession();
  static StatusOr<std::unique_ptr<HtpSession>> open_unguarded(const std::string& program_path,
                                                              const std::string& foundation_path,
                                                              const HtpSessionOptions& options);
  StatusOr<std::vector<float>> forward_unguarded(const std::vector<int64_t>& tokens,
                                                 int64_t start_pos);
  Status run_chunk(const int64_t* tokens, int64_t count, int64_t start, bool want_logits,
                   std::vector<float>* logits);

  std::string program_path_;
  ProgramInfo info_;
  HtpProgramInfo htp_;
  int64_t last_chunks_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace etlora
