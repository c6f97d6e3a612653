#include "base/errno_text.h"

#include <cstring>

namespace repatch::text {

// strerrorname_np and strerrordesc_np (glibc 2.32) only look up constant tables: unlike strerror
// they neither translate nor format into a shared buffer. Both return null for an unknown value.

const char* errno_name(int err) noexcept {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "an unknown errno";
}

const char* errno_description(int err) noexcept {
  const char* description = strerrordesc_np(err);
  return description != nullptr ? description : "Unknown error";
}

std::string errno_text(int err) {
  const char* name = strerrorname_np(err);
  std::string out = errno_description(err);
  out += " (";
  out += name != nullptr ? std::string(name) : "errno " + std::to_string(err);
  out += ')';
  return out;
}

}  // namespace repatch::text
