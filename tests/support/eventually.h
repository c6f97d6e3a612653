// Waiting in tests for something another thread does, without timed assertions: poll until it
// happens or a generous patience runs out (only a failing test waits that long).
#ifndef REPATCH_TESTS_SUPPORT_EVENTUALLY_H_
#define REPATCH_TESTS_SUPPORT_EVENTUALLY_H_

#include <chrono>
#include <thread>

namespace repatch::testing {

/// Far longer than anything should take on a loaded 2-core machine.
inline constexpr std::chrono::seconds kPatience{60};

/// Whether `done()` became true before `patience` ran out.
template <typename Done>
bool eventually(Done done, std::chrono::nanoseconds patience = kPatience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return true;
}

}  // namespace repatch::testing

#endif  // REPATCH_TESTS_SUPPORT_EVENTUALLY_H_
