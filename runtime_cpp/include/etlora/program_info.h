// What a loaded program accepts from adapters: its sites, their sizes, the
// rank and slots, and the foundation it was made for. Read from the
// program's constant methods by Session::open; AdapterFile checks against it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace etlora {

// The program format versions this runtime reads: 3 adds the attention kernel's family features
// (q/k norms, partial or no RoPE, sliding window, score scale); 2 is read as a Llama program.
constexpr int64_t kFormatVersion = 3;
constexpr int64_t kOldestFormatVersion = 2;

// What the program's constant methods say about its input layout.
struct ProgramInfo {
  int64_t format_version = 0;
  std::string foundation_fingerprint;   // of the float checkpoint: adapter files must match it
  std::string foundation_weights_id;    // the foundation as stored (fp32 or quantized): names the packed file
  std::vector<std::string> sites;               // in input order
  std::vector<std::pair<int64_t, int64_t>> site_shapes;  // (in, out) per site
  int64_t max_rank = 0;
  int64_t adapter_slots = 0;
  int64_t max_seq_len = 0;
  int64_t vocab_size = 0;
};

}  // namespace etlora
