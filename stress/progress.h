// The progress line: one line on a terminal, rewritten in place a few times a second while the
// run goes (elapsed, switches committed and aborted, ops per second, NMIs, violations).
#ifndef REPATCH_STRESS_PROGRESS_H_
#define REPATCH_STRESS_PROGRESS_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace repatch::stress {

class ProgressLine {
 public:
  /// Starts redrawing `line()` on stdout every 250 ms, when `enabled` and stdout is a terminal;
  /// otherwise does nothing.
  ProgressLine(bool enabled, std::function<std::string()> line);
  /// Stops; clears the line so that what follows starts on a clean one.
  ~ProgressLine();
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  /// Stops and clears the line. Idempotent.
  void stop();

 private:
  std::function<std::string()> line_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_PROGRESS_H_
