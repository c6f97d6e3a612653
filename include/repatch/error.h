// Errors as values.
//
// Every fallible call in repatch returns a `Status` or a `Result<T>`. A failed value carries an
// `ErrorCode` that programs branch on and a message written for a person: it names the thing that
// was refused (site address, op, group, file) and says what to do about it. Nothing in the public
// API throws.
#ifndef REPATCH_ERROR_H_
#define REPATCH_ERROR_H_

#include <cassert>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace repatch {

/// What kind of failure an `Error` reports.
enum class ErrorCode : std::uint8_t {
  kInvalidArgument,  ///< A caller passed a value the call cannot accept.
  kUnknownName,      ///< No op, variant or group has that name.
  kBadImage,         ///< An instruction image is not one allowed instruction of the site length.
  kUnrelocatable,    ///< A fragment cannot be moved to the site (operand out of range, ...).
  kForeignWrite,     ///< A site does not hold the image of its current variant.
  kBadSiteRecord,    ///< The site section is malformed (duplicate, overlap, wrong length).
  kSystem,           ///< A system call failed; the message carries errno's text.
  kState,            ///< The call is not allowed in the engine's current state.
  kUnsupported,      ///< This machine or build cannot do what was asked.
};

/// Returns a stable lower-case name for `code`, e.g. "foreign_write".
const char* error_code_name(ErrorCode code);

/// A failure: a code for programs and a message for people.
class Error {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }

  /// Returns "<code name>: <message>".
  std::string to_string() const;

 private:
  ErrorCode code_;
  std::string message_;
};

/// Success, or an `Error`.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT: implicit by design

  bool ok() const { return !failed_; }
  /// The failure. Only valid when `!ok()`.
  const Error& error() const {
    assert(failed_);
    return error_;
  }

 private:
  Error error_{ErrorCode::kState, ""};
  bool failed_ = false;
};

/// A `T`, or an `Error`.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(state_); }

  /// The value. Only valid when `ok()`.
  T& value() & {
    assert(ok());
    return std::get<T>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(state_));
  }

  /// The failure. Only valid when `!ok()`.
  const Error& error() const {
    assert(!ok());
    return std::get<Error>(state_);
  }

  /// The status alone, dropping the value.
  Status status() const { return ok() ? Status() : Status(error()); }

 private:
  std::variant<T, Error> state_;
};

}  // namespace repatch

#endif  // REPATCH_ERROR_H_
