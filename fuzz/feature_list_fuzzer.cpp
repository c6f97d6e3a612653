// Feature lists ("rtm,clflushopt"): parse_feature_list never crashes, and what it accepts holds
// only known names, sorted and without repeats.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "repatch/triggers.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto features = repatch::triggers::parse_feature_list(text);
  if (!features.ok()) {
    if (features.error().code() != repatch::ErrorCode::kUnknownName) std::abort();
    return 0;
  }
  const auto& f = features.value();
  if (!std::is_sorted(f.begin(), f.end())) std::abort();
  if (std::adjacent_find(f.begin(), f.end()) != f.end()) std::abort();
  const auto known = repatch::triggers::known_features();
  for (const std::string& name : f) {
    if (std::find(known.begin(), known.end(), name) == known.end()) std::abort();
  }
  return 0;
}
