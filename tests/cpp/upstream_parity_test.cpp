// Shows that a bundle is made of plain ExecuTorch artifacts: upstream's
// Module loads model.pte with foundation.ptd and an adapter .ptd, upstream's
// FlatTensorDataMap reads the adapter tensors, and feeding them by hand gives
// the same logits as etlora::Session. Only the comparison uses etlora code.
#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include <etlora/kernels.h>
#include <etlora/session.h>

#include "test_bundle.h"

using executorch::aten::ScalarType;
using executorch::extension::FlatTensorDataMap;
using executorch::extension::MmapDataLoader;
using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::runtime::Error;

namespace {

std::vector<int64_t> ints_of(Module& module, const char* method) {
  std::vector<int64_t> ints;
  auto outputs = module.execute(method);  // keep alive: the loop reads into it
  for (const EValue& v : *outputs) ints.push_back(v.toInt());
  return ints;
}

// Upstream-only logits for tokens 1..5 with `adapter` in slot 0 at strength 1, at positions
// 0..4, or (past_cache_end) at positions that run two rows past the KV cache.
// `failure` receives the error of a failed load or forward (Error::Ok otherwise).
std::vector<float> upstream_logits(const std::string& bundle, const std::string& adapter,
                                   bool past_cache_end = false, Error* failure = nullptr) {
  Module module(bundle + "/model.pte", {bundle + "/foundation.ptd", adapter},
                Module::LoadMode::Mmap);
  if (Error loaded = module.load(); loaded != Error::Ok) {
    std::fprintf(stderr, "upstream Module could not load the bundle with %s\n", adapter.c_str());
    if (failure) *failure = loaded;
    return {};
  }
  std::vector<std::string> sites;
  auto site_names = module.execute("etlora_sites");
  for (const EValue& v : *site_names) sites.emplace_back(v.toString());
  const std::vector<int64_t> shapes = ints_of(module, "etlora_site_shapes");
  const int64_t rank = ints_of(module, "etlora_max_rank")[0];
  const int64_t slots = ints_of(module, "etlora_adapter_slots")[0];

  auto loader = MmapDataLoader::from(adapter.c_str(), MmapDataLoader::MlockConfig::NoMlock);
  auto data_map = FlatTensorDataMap::load(&*loader);
  if (!data_map.ok()) return {};
  float scaling = 0;
  if (data_map->load_data_into("etlora.scaling", &scaling, sizeof(float)) != Error::Ok) return {};

  // Every tensor lives in `storage` until forward() returns.
  std::vector<std::vector<float>> storage;
  std::vector<TensorPtr> tensors;
  std::vector<int64_t> tokens = {1, 2, 3, 4, 5};
  std::vector<int64_t> positions = {0, 1, 2, 3, 4};
  if (past_cache_end) {
    const int64_t capacity = ints_of(module, "etlora_max_seq_len")[0];
    for (int64_t& position : positions) position += capacity - 3;
  }
  std::vector<float> scales(slots, 0.0f);
  scales[0] = scaling;
  tensors.push_back(make_tensor_ptr({1, 5}, tokens.data(), ScalarType::Long));
  tensors.push_back(make_tensor_ptr({5}, positions.data(), ScalarType::Long));
  tensors.push_back(make_tensor_ptr({int32_t(slots)}, scales.data(), ScalarType::Float));
  for (int64_t slot = 0; slot < slots; ++slot) {
    for (size_t i = 0; i < sites.size(); ++i) {
      const int32_t in = shapes[2 * i], out = shapes[2 * i + 1];
      for (const char* suffix : {".lora_a", ".lora_b"}) {
        const bool is_a = suffix[6] == 'a';
        std::vector<int32_t> sizes = is_a ? std::vector<int32_t>{1, in, int32_t(rank)}
                                          : std::vector<int32_t>{1, int32_t(rank), out};
        std::vector<float>& values = storage.emplace_back(size_t(rank) * (is_a ? in : out), 0.0f);
        if (slot == 0) {
          // Absent site: stays zero, as the contract says.
          (void)data_map->load_data_into(sites[i] + suffix, values.data(),
                                         values.size() * sizeof(float));
        }
        tensors.push_back(make_tensor_ptr(sizes, values.data(), ScalarType::Float));
      }
    }
  }
  std::vector<EValue> inputs;
  for (const TensorPtr& t : tensors) inputs.emplace_back(*t);
  auto outputs = module.forward(inputs);
  if (!outputs.ok()) {
    std::fprintf(stderr, "upstream forward failed: 0x%x\n", unsigned(outputs.error()));
    if (failure) *failure = outputs.error();
    return {};
  }
  const auto& logits = (*outputs)[0].toTensor();
  const float* data = logits.const_data_ptr<float>();
  return std::vector<float>(data, data + logits.numel());
}

}  // namespace

int main() {
  const std::string bundle = etlora_test::bundle_dir();
  const auto adapters = etlora_test::adapter_files(bundle);
  if (bundle.empty() || adapters.empty()) {
    std::printf("skipped: set ETLORA_TEST_BUNDLE to a bundle with adapters/*.ptd\n");
    return etlora_test::kSkipped;
  }
  // Upstream's Module runs the program with the stock kernels plus etlora's attention kernel.
  const etlora::Status registered = etlora::register_kernels();
  EXPECT(registered.ok(), "%s", registered.message().c_str());
  for (const std::string& adapter : adapters) {
    const std::vector<float> expected = upstream_logits(bundle, adapter);
    EXPECT(!expected.empty(), "upstream run failed for %s", adapter.c_str());

    auto session = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
    EXPECT(session.ok(), "%s", session.status().message().c_str());
    if (!session.ok()) return 1;
    auto status = (*session)->set_adapters({{adapter, 1.0f}});
    EXPECT(status.ok(), "%s", status.message().c_str());
    auto logits = (*session)->logits({1, 2, 3, 4, 5});
    EXPECT(logits.ok(), "%s", logits.status().message().c_str());
    if (!logits.ok()) continue;
    const float diff = etlora_test::max_abs_diff(*logits, expected);
    std::printf("%s: max |etlora - upstream| = %g over %zu logits\n", adapter.c_str(), diff,
                expected.size());
    EXPECT(diff <= 1e-5f, "logits differ by %g", diff);
  }
  // Positions past the KV cache are refused (by the RoPE table lookup, before attention).
  Error refusal = Error::Ok;
  const std::vector<float> refused = upstream_logits(bundle, adapters[0], /*past_cache_end=*/true, &refusal);
  // The forward itself must refuse (a kernel's InvalidArgument), not the load or anything else.
  EXPECT(refused.empty() && refusal == Error::InvalidArgument,
         "positions past the KV cache: expected forward to fail with InvalidArgument (0x%x), got 0x%x",
         unsigned(Error::InvalidArgument), unsigned(refusal));
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
