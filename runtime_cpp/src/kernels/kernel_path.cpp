// Which compiled vector path etlora's kernels run (kernel_path.h).
#include "etlora/kernel_path.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "kernels/attention_rows.h"

namespace etlora {
namespace {

std::mutex g_mutex;
std::atomic<const CompiledKernelPath*> g_selected{nullptr};

std::string runnable_names() {
  std::string names;
  for (int i = 0; i < kCompiledKernelPathCount; ++i) {
    if (!kCompiledKernelPaths[i].cpu_runs()) continue;
    names += (names.empty() ? "" : ", ") + std::string(kCompiledKernelPaths[i].name);
  }
  return names;
}

// The path a name stands for on this CPU, or why there is none.
StatusOr<const CompiledKernelPath*> resolve(const std::string& name, const std::string& origin) {
  if (name == "auto") {
    for (int i = 0; i < kCompiledKernelPathCount; ++i) {
      if (kCompiledKernelPaths[i].cpu_runs()) return &kCompiledKernelPaths[i];
    }
  }
  for (int i = 0; i < kCompiledKernelPathCount; ++i) {
    const CompiledKernelPath& path = kCompiledKernelPaths[i];
    if (name != path.name) continue;
    if (path.cpu_runs()) return &path;
    return Status(StatusCode::kInvalidArgument,
                  origin + ": kernel path '" + name + "' needs " + path.needs +
                      ", which this CPU lacks (runnable here: " + runnable_names() + ")");
  }
  std::string known;
  for (int i = 0; i < kCompiledKernelPathCount; ++i) known += std::string(kCompiledKernelPaths[i].name) + ", ";
  return Status(StatusCode::kInvalidArgument,
                origin + ": expected a kernel path of this build (" + known + "auto), got '" + name + "'");
}

}  // namespace

std::vector<KernelPathInfo> kernel_paths() {
  std::vector<KernelPathInfo> paths;
  for (int i = 0; i < kCompiledKernelPathCount; ++i) {
    const CompiledKernelPath& path = kCompiledKernelPaths[i];
    paths.push_back({path.name, path.needs, path.cpu_runs()});
  }
  return paths;
}

Status select_kernel_path(const std::string& name) {
  auto path = resolve(name, "select_kernel_path");
  if (!path.ok()) return path.status();
  std::lock_guard<std::mutex> lock(g_mutex);
  g_selected.store(*path, std::memory_order_release);
  return Status();
}

StatusOr<const AttentionRowOps*> attention_row_ops() {
  const CompiledKernelPath* selected = g_selected.load(std::memory_order_acquire);
  if (selected != nullptr) return selected->ops;
  std::lock_guard<std::mutex> lock(g_mutex);
  selected = g_selected.load(std::memory_order_relaxed);
  if (selected == nullptr) {
    const char* from_environment = std::getenv("ETLORA_KERNEL_PATH");
    const bool set = from_environment != nullptr && from_environment[0] != '\0';
    auto path = resolve(set ? from_environment : "auto", "ETLORA_KERNEL_PATH");
    if (!path.ok()) return path.status();
    selected = *path;
    g_selected.store(selected, std::memory_order_release);
  }
  return selected->ops;
}

StatusOr<std::string> kernel_path() {
  auto ops = attention_row_ops();
  if (!ops.ok()) return ops.status();
  return std::string(g_selected.load(std::memory_order_acquire)->name);
}

}  // namespace etlora
