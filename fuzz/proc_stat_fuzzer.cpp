// /proc/stat text: parse_proc_stat never crashes, and the steal share between two samples stays
// within 0-100, the busiest CPU's at or above the average.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "trigger/proc_stat.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Two samples: the first half of the input and the second.
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string_view halves[2] = {text.substr(0, size / 2), text.substr(size / 2)};
  repatch::triggers::ProcStat samples[2];
  for (int i = 0; i < 2; ++i) {
    repatch::Result<repatch::triggers::ProcStat> stat =
        repatch::triggers::parse_proc_stat(halves[i]);
    if (!stat.ok()) {
      if (stat.error().message().empty()) std::abort();
      return 0;
    }
    samples[i] = std::move(stat.value());
  }
  const auto share = repatch::triggers::steal_between(samples[0], samples[1]);
  if (share && !(share->all_percent >= 0 && share->all_percent <= 100 &&
                 share->max_cpu_percent >= share->all_percent && share->max_cpu_percent <= 100)) {
    std::abort();
  }
  return 0;
}
