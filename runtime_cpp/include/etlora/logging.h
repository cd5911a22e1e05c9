// What ExecuTorch prints: its info lines (cpuinfo probing, "Loaded packed
// weight cache", ...) are noise on every run, so by default only its errors
// reach stderr; verbose mode shows everything.
#pragma once

namespace etlora {

// Installs etlora's filter in ExecuTorch's platform layer (once, thread-safe)
// and sets whether info/debug lines pass. The default, before any call, is
// taken from the environment: ETLORA_LOG=info shows them, anything else hides.
// Session::open installs the filter with that default.
void set_runtime_log_verbose(bool verbose);
void install_runtime_log_filter();

}  // namespace etlora
