// The adapter reader on its own (etlora::AdapterFile: src/format/adapter_file.cpp
// and flat_tensor_check.cpp), on committed fixtures and without any Python:
// fp32, fp16 and activated-LoRA files read to the values the writer put in,
// AdapterFile::check_for_program's three refusals, and every damaged file
// refused with its file and fault named.
// Fixtures: tests/fixtures/bundles (scripts/dev/make_reader_fixtures.py) and
// tests/fixtures/malformed (scripts/dev/make_malformed_fixtures.py).
#include <executorch/runtime/core/portable_type/half.h>

#include <memory>
#include <tuple>

#include <etlora/adapter_file.h>

#include "reader_fixtures.h"

using etlora::StatusCode;
using etlora_test::expect_error;
using etlora_test::kFixtureFingerprint;
using etlora_test::kOtherFingerprint;

namespace {

std::string bundles;  // tests/fixtures/bundles
const std::string kQ = "model.layers.0.self_attn.q_proj", kV = "model.layers.0.self_attn.v_proj";
constexpr int kMaxRank = 4;  // the fixture program's max rank: files are padded to it

// The fixture program (manifest "program"): q_proj and v_proj of both layers, rank 4.
etlora::ProgramInfo fixture_program() {
  etlora::ProgramInfo program;
  program.format_version = 2;
  program.foundation_fingerprint = kFixtureFingerprint;
  program.foundation_weights_id = kFixtureFingerprint;
  program.sites = {kQ, kV, "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
  program.site_shapes = {{64, 64}, {64, 32}, {64, 64}, {64, 32}};
  program.max_rank = kMaxRank;
  program.adapter_slots = 2;
  program.max_seq_len = 64;
  program.vocab_size = 256;
  return program;
}

std::shared_ptr<const etlora::AdapterFile> open_ok(const std::string& path) {
  auto file = etlora::AdapterFile::open(path);
  EXPECT(file.ok(), "%s: %s", path.c_str(), file.status().message().c_str());
  return file.ok() ? *file : nullptr;
}

// The keys and sizes the writer gives an adapter with these sites, padded to the program's rank.
void expect_layout(const etlora::AdapterFile& file, const std::vector<std::pair<std::string, int32_t>>& sites) {
  EXPECT(file.tensors().size() == 2 * sites.size(), "%s: %zu tensors, expected %zu", file.path().c_str(),
         file.tensors().size(), 2 * sites.size());
  for (const auto& [site, out] : sites) {
    const auto a = file.tensors().find(site + ".lora_a"), b = file.tensors().find(site + ".lora_b");
    EXPECT(a != file.tensors().end() && a->second.sizes == std::vector<int32_t>({1, 64, kMaxRank}),
           "%s: %s.lora_a missing or not [1, 64, 4]", file.path().c_str(), site.c_str());
    EXPECT(b != file.tensors().end() && b->second.sizes == std::vector<int32_t>({1, kMaxRank, out}),
           "%s: %s.lora_b missing or not [1, 4, %d]", file.path().c_str(), site.c_str(), out);
  }
}

// Rank `rank` padded to kMaxRank: lora_a's columns and lora_b's rows at and
// above `rank` are zero, the ones below are not all zero (PEFT weights are random).
void expect_padding(const etlora::AdapterFile& file, const std::string& site, int rank) {
  const etlora::AdapterTensor& a = file.tensors().at(site + ".lora_a");
  const etlora::AdapterTensor& b = file.tensors().at(site + ".lora_b");
  float padded = 0, used = 0;
  for (int row = 0; row < a.sizes[1]; ++row) {
    for (int r = 0; r < kMaxRank; ++r) (r < rank ? used : padded) += std::fabs(a.data[row * kMaxRank + r]);
  }
  for (int r = 0; r < kMaxRank; ++r) {
    for (int col = 0; col < b.sizes[2]; ++col) (r < rank ? used : padded) += std::fabs(b.data[r * b.sizes[2] + col]);
  }
  EXPECT(padded == 0 && used > 0, "%s %s: padding sums to %g, the rank-%d part to %g", file.path().c_str(),
         site.c_str(), padded, rank, used);
}

void valid_files() {
  const std::string dir = bundles + "/valid/v5_alora/adapters/";
  auto plain = open_ok(dir + "plain.ptd");
  auto half = open_ok(dir + "half.ptd");
  auto invoked = open_ok(dir + "invoked.ptd");
  if (!plain || !half || !invoked) return;

  // fp32, rank 2 on q_proj and v_proj of layer 0, alpha 4.
  EXPECT(plain->path() == dir + "plain.ptd", "path %s", plain->path().c_str());
  EXPECT(plain->foundation_fingerprint() == kFixtureFingerprint, "plain fingerprint %s",
         plain->foundation_fingerprint().c_str());
  EXPECT(plain->scaling() == 2.0f, "plain scaling %g, expected alpha 4 / rank 2", plain->scaling());
  EXPECT(plain->alora_invocation_tokens().empty(), "plain has invocation tokens");
  EXPECT(!plain->widened_from_fp16(), "plain is fp32");
  expect_layout(*plain, {{kQ, 64}, {kV, 32}});
  expect_padding(*plain, kQ, 2);
  expect_padding(*plain, kV, 2);
  EXPECT(plain->tensor_bytes() == (64 * 4 + 4 * 64 + 64 * 4 + 4 * 32) * 4, "plain tensor_bytes %lld",
         (long long)plain->tensor_bytes());

  // The same adapter stored as fp16: widened at open, every value the fp32 one rounded to half.
  EXPECT(half->widened_from_fp16(), "half.ptd is not read as fp16");
  EXPECT(half->scaling() == 2.0f && half->foundation_fingerprint() == kFixtureFingerprint, "half metadata");
  expect_layout(*half, {{kQ, 64}, {kV, 32}});
  EXPECT(half->tensor_bytes() == plain->tensor_bytes(), "half tensor_bytes %lld (float32 copies)",
         (long long)half->tensor_bytes());
  size_t checked = 0, rounded = 0, wrong = 0;
  for (const auto& [key, tensor] : plain->tensors()) {
    const etlora::AdapterTensor& widened = half->tensors().at(key);
    size_t count = 1;
    for (int32_t size : tensor.sizes) count *= static_cast<size_t>(size);
    for (size_t i = 0; i < count; ++i, ++checked) {
      const float expected = static_cast<float>(executorch::runtime::etensor::Half(tensor.data[i]));
      wrong += widened.data[i] != expected;
      rounded += widened.data[i] != tensor.data[i];
    }
  }
  EXPECT(checked == 896 && wrong == 0 && rounded > 0,
         "half: %zu of %zu values differ from fp32 rounded to half (%zu rounded at all)", wrong, checked, rounded);

  // Activated LoRA: rank 1 on q_proj of layer 0, alpha 3, invoked by tokens 17 42 99.
  EXPECT(invoked->alora_invocation_tokens() == std::vector<int64_t>({17, 42, 99}), "invoked: %zu tokens",
         invoked->alora_invocation_tokens().size());
  EXPECT(invoked->scaling() == 3.0f, "invoked scaling %g", invoked->scaling());
  expect_layout(*invoked, {{kQ, 64}});
  expect_padding(*invoked, kQ, 1);

  // One mapping per file while someone holds it.
  auto again = open_ok(dir + "plain.ptd");
  EXPECT(again.get() == plain.get(), "a second open of plain.ptd mapped it again");

  // Against the program: all three fit.
  const etlora::ProgramInfo program = fixture_program();
  for (const auto& file : {plain, half, invoked}) {
    etlora::Status fits = file->check_for_program(program, "fixture.pte");
    EXPECT(fits.ok(), "%s", fits.message().c_str());
  }
  // The three refusals, in the order docs/bundle-format.md gives them.
  etlora::ProgramInfo other = program;
  other.foundation_fingerprint = kOtherFingerprint;
  expect_error(plain->check_for_program(other, "other.pte"), StatusCode::kIncompatible,
               {"adapter file " + dir + "plain.ptd is for foundation " + kFixtureFingerprint +
                ", program other.pte has foundation " + kOtherFingerprint +
                "; hint: adapter made for another foundation"},
               "another foundation");
  etlora::ProgramInfo layer1 = program;
  layer1.sites.erase(layer1.sites.begin(), layer1.sites.begin() + 2);
  layer1.site_shapes.erase(layer1.site_shapes.begin(), layer1.site_shapes.begin() + 2);
  expect_error(plain->check_for_program(layer1, "layer1.pte"), StatusCode::kIncompatible,
               {"adapter file " + dir + "plain.ptd targets " + kQ + ", program layer1.pte has no slot for it"},
               "site without a slot");
  etlora::ProgramInfo rank8 = program;
  rank8.max_rank = 8;
  expect_error(plain->check_for_program(rank8, "rank8.pte"), StatusCode::kIncompatible,
               {"adapter file " + dir + "plain.ptd: key " + kQ + ".lora_a expected shape [1, 64, 8], got [1, 64, 4]",
                "padded to the program's max rank 8"},
               "another rank");
}

// Files of a bundle whose manifest is fine, each wrong in one way.
void damaged_files() {
  const std::string dir = bundles + "/damaged_adapters/adapters/";
  const etlora::ProgramInfo program = fixture_program();
  const std::vector<std::tuple<std::string, StatusCode, std::vector<std::string>>> refused_at_open = {
      {"truncated", StatusCode::kInvalidArgument, {"not a valid FlatTensor (.ptd) file"}},
      {"no_lora_b", StatusCode::kInvalidArgument,
       {"has " + kV + ".lora_a but no " + kV + ".lora_b; hint: the file is incomplete, re-export it"}},
      {"future_format", StatusCode::kIncompatible,
       {"format version expected 1, got \"2\"; hint: re-export the adapter with this etlora version"}},
      {"no_version", StatusCode::kInvalidArgument,
       {"expected an etlora adapter (entry etlora.format_version), the .ptd has none"}},
      {"token_too_big", StatusCode::kInvalidArgument,
       {"etlora.alora_invocation_tokens[1] is expected to be a token id >= 0 and < 2^31, got 2147483648"}},
      {"missing", StatusCode::kNotFound, {"not found (expected a .ptd file written by etlora)"}},
  };
  for (const auto& [name, code, parts] : refused_at_open) {
    std::vector<std::string> with_file = parts;
    with_file.push_back("adapter file " + dir + name + ".ptd");
    expect_error(etlora::AdapterFile::open(dir + name + ".ptd").status(), code, with_file, name);
  }
  // These open (each is a well-formed adapter file) and the program refuses them.
  if (auto wrong = open_ok(dir + "wrong_lora_b.ptd")) {
    expect_error(wrong->check_for_program(program, "fixture.pte"), StatusCode::kIncompatible,
                 {"adapter file " + dir + "wrong_lora_b.ptd: key " + kQ +
                  ".lora_b expected shape [1, 4, 64], got [1, 4, 32]"},
                 "wrong-shaped lora_b");
  }
  if (auto other = open_ok(dir + "other_foundation.ptd")) {
    EXPECT(other->foundation_fingerprint() == kOtherFingerprint, "other_foundation fingerprint %s",
           other->foundation_fingerprint().c_str());
    expect_error(other->check_for_program(program, "fixture.pte"), StatusCode::kIncompatible,
                 {"is for foundation " + kOtherFingerprint + ", program fixture.pte has foundation " +
                  kFixtureFingerprint},
                 "other foundation");
  }
}

// tests/fixtures/malformed: hostile .ptd files (the Python tests feed the same files to both readers).
void malformed_files() {
  const std::string dir = bundles + "/../malformed/";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"adapter_truncated.ptd", "not a valid FlatTensor (.ptd) file"},
      {"adapter_bad_magic.ptd", "expected the identifier FT01 at byte 4"},
      {"adapter_garbage_header.ptd", "expected the header magic FH01 at byte 8"},
      {"adapter_named_data_outside.ptd", "named_data: points outside"},
      {"adapter_key_length_huge.ptd", "named_data[0].key"},
      {"adapter_entry_exceeds_segment.ptd", "its segment holds"},
      {"adapter_negative_size.ptd", "negative size"},
      {"adapter_misaligned_fp16.ptd", "starts at a misaligned offset for"},
      {"adapter_layout_without_sizes.ptd", "without sizes or dim_order"},
  };
  for (const auto& [name, part] : cases) {
    expect_error(etlora::AdapterFile::open(dir + name).status(), StatusCode::kInvalidArgument,
                 {"adapter file " + dir + name, part}, name);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fixtures = etlora_test::fixtures_dir(argc, argv);
  if (fixtures.empty()) return 2;
  bundles = fixtures + "/bundles";
  valid_files();
  damaged_files();
  malformed_files();
  return etlora_test::report("adapter_reader_test");
}
