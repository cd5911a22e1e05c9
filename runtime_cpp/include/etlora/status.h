// Error values of the etlora runtime. Library code never aborts: every
// failure comes back as a Status whose message says what was expected, what
// was received and what to do about it.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace etlora {

enum class StatusCode {
  kOk,
  kInvalidArgument,  // the caller passed something wrong (tokens, strength...)
  kNotFound,         // a file or key does not exist
  kIncompatible,     // a file is fine but made for another program/foundation
  kRuntimeError,     // ExecuTorch failed while loading or executing
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status saying why there is none.
template <typename T>
class StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}
  StatusOr(Status status) : status_(std::move(status)) {}

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace etlora
