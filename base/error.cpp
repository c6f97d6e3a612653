#include "repatch/error.h"

namespace repatch {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kUnknownName:
      return "unknown_name";
    case ErrorCode::kBadImage:
      return "bad_image";
    case ErrorCode::kUnrelocatable:
      return "unrelocatable";
    case ErrorCode::kForeignWrite:
      return "foreign_write";
    case ErrorCode::kBadSiteRecord:
      return "bad_site_record";
    case ErrorCode::kSystem:
      return "system";
    case ErrorCode::kState:
      return "state";
    case ErrorCode::kUnsupported:
      return "unsupported";
  }
  return "unknown";
}

std::string Error::to_string() const {
  return std::string(error_code_name(code_)) + ": " + message_;
}

}  // namespace repatch
