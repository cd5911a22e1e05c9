// A loaded program that runs, whichever session holds it: the calls a front end
// makes on a Session (model.pte) or an HtpSession (model_htp.pte) alike.
// LoadedBundle holds one; etlora_runner's --model mode wraps a Session in one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <etlora/generator.h>
#include <etlora/htp_session.h>
#include <etlora/program_info.h>
#include <etlora/session.h>
#include <etlora/status.h>

namespace etlora {

class RunningProgram {
 public:
  virtual ~RunningProgram() = default;
  virtual const ProgramInfo& info() const = 0;
  virtual const std::string& program_path() const = 0;
  virtual Status set_adapters(const std::vector<AdapterChoice>& adapters) = 0;
  virtual StatusOr<std::vector<float>> forward(const std::vector<int64_t>& tokens, int64_t start_pos) = 0;
  virtual int64_t reusable_prefix(const std::vector<int64_t>& prompt) const = 0;
  virtual StatusOr<GenerationResult> generate(const std::vector<int64_t>& prompt, const GenerationOptions& options,
                                              const TokenCallback& on_token) = 0;
  virtual std::vector<std::string> resident_adapter_paths() const = 0;
  virtual uint64_t resident_adapter_bytes() const = 0;
  virtual size_t release_unbound_adapters() = 0;
  // The session kind that runs; exactly one is non-null.
  virtual const Session* session() const { return nullptr; }
  virtual const HtpSession* htp_session() const { return nullptr; }
};

std::unique_ptr<RunningProgram> running_program(std::unique_ptr<Session> session);
std::unique_ptr<RunningProgram> running_program(std::unique_ptr<HtpSession> session);

}  // namespace etlora
