// RunningProgram over either session: one template, instantiated for both.
#include <etlora/running_program.h>

#include <type_traits>

namespace etlora {

namespace {

template <class AnySession>
class RunningOn final : public RunningProgram {
 public:
  explicit RunningOn(std::unique_ptr<AnySession> session) : session_(std::move(session)) {}
  const ProgramInfo& info() const override { return session_->info(); }
  const std::string& program_path() const override { return session_->program_path(); }
  Status set_adapters(const std::vector<AdapterChoice>& adapters) override { return session_->set_adapters(adapters); }
  StatusOr<std::vector<float>> forward(const std::vector<int64_t>& tokens, int64_t start_pos) override {
    return session_->forward(tokens, start_pos);
  }
  int64_t reusable_prefix(const std::vector<int64_t>& prompt) const override {
    return session_->reusable_prefix(prompt);
  }
  StatusOr<GenerationResult> generate(const std::vector<int64_t>& prompt, const GenerationOptions& options,
                                      const TokenCallback& on_token) override {
    return etlora::generate(*session_, prompt, options, on_token);
  }
  std::vector<std::string> resident_adapter_paths() const override { return session_->resident_adapter_paths(); }
  uint64_t resident_adapter_bytes() const override { return session_->resident_adapter_bytes(); }
  size_t release_unbound_adapters() override { return session_->release_unbound_adapters(); }
  const Session* session() const override {
    if constexpr (std::is_same_v<AnySession, Session>) return session_.get();
    return nullptr;
  }
  const HtpSession* htp_session() const override {
    if constexpr (std::is_same_v<AnySession, HtpSession>) return session_.get();
    return nullptr;
  }

 private:
  std::unique_ptr<AnySession> session_;
};

}  // namespace

std::unique_ptr<RunningProgram> running_program(std::unique_ptr<Session> session) {
  return std::make_unique<RunningOn<Session>>(std::move(session));
}

std::unique_ptr<RunningProgram> running_program(std::unique_ptr<HtpSession> session) {
  return std::make_unique<RunningOn<HtpSession>>(std::move(session));
}

}  // namespace etlora
