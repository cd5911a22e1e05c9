// The bundle reader on its own (etlora::Bundle: src/format/bundle.cpp and
// json.cpp), on committed fixtures and without any Python: every field of one
// valid bundle per format version, and the message of every refused manifest.
// Fixtures: tests/fixtures/bundles (scripts/dev/make_reader_fixtures.py).
#include <climits>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>

#include <etlora/adapter_file.h>
#include <etlora/bundle.h>

#include "reader_fixtures.h"

using etlora::StatusCode;
using etlora_test::contains;
using etlora_test::expect_error;
using etlora_test::kFixtureFingerprint;

namespace {

std::string bundles;  // tests/fixtures/bundles

// Bundle::open of bundles/<name>, which must succeed.
std::optional<etlora::Bundle> open_valid(const std::string& name) {
  auto bundle = etlora::Bundle::open(bundles + "/" + name);
  EXPECT(bundle.ok(), "%s: %s", name.c_str(), bundle.status().message().c_str());
  if (!bundle.ok()) return std::nullopt;
  return *bundle;
}

// One adapter entry as the manifest gives it.
void expect_adapter(const etlora::BundleAdapter& adapter, const std::string& name, const std::string& dtype,
                    int64_t rank, const std::vector<int64_t>& tokens) {
  EXPECT(adapter.name == name, "adapter name %s, expected %s", adapter.name.c_str(), name.c_str());
  EXPECT(adapter.file == "adapters/" + name + ".ptd", "%s: file %s", name.c_str(), adapter.file.c_str());
  EXPECT(adapter.dtype == dtype, "%s: dtype %s, expected %s", name.c_str(), adapter.dtype.c_str(), dtype.c_str());
  EXPECT(adapter.rank == rank, "%s: rank %lld, expected %lld", name.c_str(), (long long)adapter.rank, (long long)rank);
  EXPECT(adapter.alora_invocation_tokens == tokens, "%s: %zu invocation tokens, expected %zu", name.c_str(),
         adapter.alora_invocation_tokens.size(), tokens.size());
}

// What every valid fixture shares: its paths, the foundation's fingerprint and one adapter 'plain'.
void expect_common(const etlora::Bundle& bundle, const std::string& name, int version) {
  const std::string dir = bundles + "/" + name;
  EXPECT(bundle.dir() == dir, "%s: dir %s", name.c_str(), bundle.dir().c_str());
  EXPECT(bundle.format_version() == version, "%s: format_version %d, expected %d", name.c_str(),
         bundle.format_version(), version);
  EXPECT(bundle.program_path() == dir + "/model.pte", "%s: %s", name.c_str(), bundle.program_path().c_str());
  EXPECT(bundle.foundation_path() == dir + "/foundation.ptd", "%s: %s", name.c_str(),
         bundle.foundation_path().c_str());
  EXPECT(bundle.foundation_fingerprint() == kFixtureFingerprint, "%s: fingerprint %s", name.c_str(),
         bundle.foundation_fingerprint().c_str());
  auto path = bundle.adapter_path("plain");
  EXPECT(path.ok() && *path == dir + "/adapters/plain.ptd", "%s: adapter_path(plain) %s", name.c_str(),
         path.ok() ? path->c_str() : path.status().message().c_str());
}

void valid_bundles() {
  // Version 1: no weights_id (read as the fingerprint), no quantization (fp32), no dtype (fp32).
  if (auto bundle = open_valid("valid/v1")) {
    expect_common(*bundle, "valid/v1", 1);
    EXPECT(bundle->foundation_weights_id() == kFixtureFingerprint, "v1 weights id %s",
           bundle->foundation_weights_id().c_str());
    EXPECT(bundle->quantization_scheme() == "fp32", "v1 scheme %s", bundle->quantization_scheme().c_str());
    EXPECT(bundle->tokenizer_path().empty(), "v1 tokenizer %s", bundle->tokenizer_path().c_str());
    EXPECT(!bundle->htp_program().has_value(), "v1 has an HTP program");
    EXPECT(bundle->adapters().size() == 1, "v1: %zu adapters", bundle->adapters().size());
    if (bundle->adapters().size() == 1) expect_adapter(bundle->adapters()[0], "plain", "fp32", 2, {});
  }
  // Version 2: a quantized foundation; weights_id is sha256("<fingerprint>|8da8w-pc-emb8pc").
  if (auto bundle = open_valid("valid/v2_8da8w")) {
    expect_common(*bundle, "valid/v2_8da8w", 2);
    EXPECT(bundle->foundation_weights_id() == "22d8595b26bbdb8968924f720649a096a4d06755f74446e2b74922f7d9e48c0f",
           "v2 weights id %s", bundle->foundation_weights_id().c_str());
    EXPECT(bundle->quantization_scheme() == "8da8w", "v2 scheme %s", bundle->quantization_scheme().c_str());
    EXPECT(bundle->adapters().size() == 1, "v2: %zu adapters", bundle->adapters().size());
    if (bundle->adapters().size() == 1) expect_adapter(bundle->adapters()[0], "plain", "fp32", 2, {});
  }
  // Version 3: adapters[].dtype.
  if (auto bundle = open_valid("valid/v3_fp16")) {
    expect_common(*bundle, "valid/v3_fp16", 3);
    EXPECT(bundle->foundation_weights_id() == kFixtureFingerprint, "v3 weights id");
    EXPECT(bundle->quantization_scheme() == "fp32", "v3 scheme %s", bundle->quantization_scheme().c_str());
    EXPECT(bundle->adapters().size() == 1, "v3: %zu adapters", bundle->adapters().size());
    if (bundle->adapters().size() == 1) expect_adapter(bundle->adapters()[0], "plain", "fp16", 2, {});
    EXPECT(!bundle->htp_program().has_value(), "v3 has an HTP program");
  }
  // Version 4: the htp_program record, every member.
  if (auto bundle = open_valid("valid/v4_htp")) {
    expect_common(*bundle, "valid/v4_htp", 4);
    const auto& htp = bundle->htp_program();
    EXPECT(htp.has_value(), "v4: no HTP program");
    if (htp) {
      EXPECT(htp->file == "model_htp.pte", "htp file %s", htp->file.c_str());
      EXPECT(htp->path == bundles + "/valid/v4_htp/model_htp.pte", "htp path %s", htp->path.c_str());
      EXPECT(htp->soc == "SM8650", "htp soc %s", htp->soc.c_str());
      EXPECT(htp->qnn_sdk_version == "2.37.0.250724", "htp sdk %s", htp->qnn_sdk_version.c_str());
      EXPECT(htp->chunk_len == 32 && htp->cache_len == 128, "htp chunk %lld cache %lld", (long long)htp->chunk_len,
             (long long)htp->cache_len);
      EXPECT(htp->foundation_in_context_bytes == 123456, "htp in-context bytes %lld",
             (long long)htp->foundation_in_context_bytes);
    }
  }
  // Version 5 as this etlora writes it: three adapters (fp32, fp16, activated LoRA), a tokenizer, 8da4w.
  if (auto bundle = open_valid("valid/v5_alora")) {
    const std::string dir = bundles + "/valid/v5_alora";
    expect_common(*bundle, "valid/v5_alora", 5);
    // sha256("<fingerprint>|8da4w-g32-head8-emb4g32")
    EXPECT(bundle->foundation_weights_id() == "10e41aca1109efb3de7356c094909e4a6943fccfba81971294ee09fffea9dca7",
           "v5 weights id %s", bundle->foundation_weights_id().c_str());
    EXPECT(bundle->quantization_scheme() == "8da4w", "v5 scheme %s", bundle->quantization_scheme().c_str());
    EXPECT(bundle->tokenizer_path() == dir + "/tokenizer/etlora_tokenizer.txt", "v5 tokenizer %s",
           bundle->tokenizer_path().c_str());
    EXPECT(!bundle->htp_program().has_value(), "v5 has an HTP program");
    EXPECT(bundle->adapters().size() == 3, "v5: %zu adapters", bundle->adapters().size());
    if (bundle->adapters().size() == 3) {  // in name order
      expect_adapter(bundle->adapters()[0], "half", "fp16", 2, {});
      expect_adapter(bundle->adapters()[1], "invoked", "fp32", 1, {17, 42, 99});
      expect_adapter(bundle->adapters()[2], "plain", "fp32", 2, {});
    }
    auto unknown = bundle->adapter_path("chat");
    expect_error(unknown.status(), StatusCode::kNotFound,
                 {dir + ": no adapter named 'chat' (bundle has: half, invoked, plain)"}, "adapter_path(chat)");
    // parse reads the same text to the same answer without looking at files.
    std::ifstream in(dir + "/manifest.json");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto parsed = etlora::Bundle::parse(text, "/nonexistent-bundle");
    EXPECT(parsed.ok() && parsed->adapters().size() == 3 && parsed->format_version() == 5 &&
               parsed->program_path() == "/nonexistent-bundle/model.pte",
           "parse: %s", parsed.status().message().c_str());
  }
  // Version 7 as this etlora writes it: the tokenizer is the model's tokenizer.json.
  if (auto bundle = open_valid("valid/v7_tokenizer")) {
    const std::string dir = bundles + "/valid/v7_tokenizer";
    expect_common(*bundle, "valid/v7_tokenizer", 7);
    EXPECT(bundle->tokenizer_path() == dir + "/tokenizer/tokenizer.json", "v7 tokenizer %s",
           bundle->tokenizer_path().c_str());
  }
}

// Every refused manifest: the file named, then what was expected and what was found.
void refused_manifests() {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"wrong_format", {"expected format 'etlora-bundle', received 'other-bundle'"}},
      {"missing_member", {"manifest is missing or has unexpected fields (program has no 'max_rank')"}},
      {"unexpected_member", {"manifest is missing or has unexpected fields (adapters['plain'] has an unexpected 'speed')"}},
      {"unknown_scheme",
       {"foundation quantization scheme '2da1w' is unknown to this etlora (reads fp32, 8da4w, 8da8w; hint: upgrade "
        "etlora)"}},
      {"negative_rank", {"adapters['plain'].rank: expected an integer >= 0, got -1"}},
      {"float_rank", {"adapters['plain'].rank: expected an integer >= 0, got a number that is not a whole number"}},
      {"alora_negative_token",
       {"adapters['invoked'].alora_invocation_tokens[1]: expected an integer >= 0 and < 2^31, got -1"}},
      {"alora_no_tokens",
       {"adapters['invoked'].alora_invocation_tokens: expected null or an array of 1 to 64 token ids, got 0 entries"}},
      {"path_parent",
       {"adapters['plain'].file is '../../valid/v5_alora/adapters/plain.ptd', expected a relative path inside the "
        "bundle (no '..', not absolute); hint: the manifest was edited or is hostile"}},
      {"path_absolute", {"foundation.file is '/etc/passwd', expected a relative path inside the bundle"}},
      {"path_backslash",
       {"tokenizer.runtime_file is 'tokenizer\\etlora_tokenizer.txt', expected a relative path inside the bundle"}},
      {"htp_not_listed",
       {"htp_program.file 'model_htp.pte' is not listed in files (expected every program file listed with its size "
        "and sha256)"}},
      {"htp_chunk_over_cache", {"htp_program.chunk_len: expected at most cache_len (128), got 256"}},
      {"not_json", {"manifest.json at byte 2836: unterminated string"}},
  };
  for (const auto& [name, parts] : cases) {
    const std::string dir = bundles + "/refused/" + name;
    std::vector<std::string> with_file = parts;
    with_file.push_back(dir + "/manifest.json");
    expect_error(etlora::Bundle::open(dir).status(), StatusCode::kInvalidArgument, with_file, name);
  }

  // A listed file that is a symlink to a file of another bundle.
  const std::string symlink_out = bundles + "/refused/symlink_out";
  char outside[PATH_MAX], root[PATH_MAX];
  const bool resolved = ::realpath((bundles + "/valid/v5_alora/adapters/plain.ptd").c_str(), outside) &&
                        ::realpath(symlink_out.c_str(), root);
  EXPECT(resolved, "cannot resolve the symlink fixture's paths");
  if (resolved) {
    expect_error(etlora::Bundle::open(symlink_out).status(), StatusCode::kInvalidArgument,
                 {symlink_out + "/manifest.json: ", "'adapters/plain.ptd' resolves to " + std::string(outside) +
                      ", outside the bundle " + root + " (a symlink leading out); hint: copy the file into the bundle"},
                 "symlink_out");
  }

  // The manifest of a future etlora (tests/fixtures/malformed, shared with the Python tests).
  std::ifstream in(bundles + "/../malformed/manifest_future_version.json");
  const std::string future((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT(!future.empty(), "malformed/manifest_future_version.json not found");
  expect_error(etlora::Bundle::parse(future, "/future").status(), StatusCode::kInvalidArgument,
               {"/future/manifest.json: bundle format version 99, this etlora reads versions 1, 2, 3, 4, 5, 6, 7 (hint: "
                "re-export the bundle with this etlora, or upgrade etlora)"},
               "future version");

  // A folder without manifest.json.
  expect_error(etlora::Bundle::open(bundles).status(), StatusCode::kNotFound,
               {bundles + ": not an etlora bundle (manifest.json not found)"}, "no manifest");
}

// The manifest reader checks paths, not presence: a listed file that is gone
// is reported by whoever opens it, naming the path.
void missing_listed_file() {
  const std::string dir = bundles + "/damaged_adapters";
  auto bundle = etlora::Bundle::open(dir);
  EXPECT(bundle.ok(), "damaged_adapters: %s", bundle.status().message().c_str());
  if (!bundle.ok()) return;
  EXPECT(bundle->adapters().size() == 8, "damaged_adapters: %zu adapters", bundle->adapters().size());
  auto path = bundle->adapter_path("missing");
  EXPECT(path.ok() && *path == dir + "/adapters/missing.ptd", "adapter_path(missing)");
  if (!path.ok()) return;
  expect_error(etlora::AdapterFile::open(*path).status(), StatusCode::kNotFound,
               {"adapter file " + dir + "/adapters/missing.ptd not found (expected a .ptd file written by etlora)"},
               "missing adapter file");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fixtures = etlora_test::fixtures_dir(argc, argv);
  if (fixtures.empty()) return 2;
  bundles = fixtures + "/bundles";
  valid_bundles();
  refused_manifests();
  missing_listed_file();
  return etlora_test::report("bundle_reader_test");
}
