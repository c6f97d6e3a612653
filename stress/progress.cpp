#include "stress/progress.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

namespace repatch::stress {

ProgressLine::ProgressLine(bool enabled, std::function<std::string()> line)
    : line_(std::move(line)) {
  if (!enabled || isatty(STDOUT_FILENO) == 0) return;
  thread_ = std::thread([this] {
    while (!stop_.load(std::memory_order_relaxed)) {
      // "\r" back to the start, "\033[K" erases what a longer earlier line left.
      std::printf("\r%s\033[K", line_().c_str());
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    std::printf("\r\033[K");
    std::fflush(stdout);
  });
}

ProgressLine::~ProgressLine() {
  stop();
}

void ProgressLine::stop() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

}  // namespace repatch::stress
