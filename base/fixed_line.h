// A line of text built in a caller's fixed buffer, for code that may run in a signal handler or
// under stop-machine: no allocation, no stdio (snprintf is not async-signal-safe), no locale.
// Output beyond the buffer is dropped; the line is always NUL-terminated.
#ifndef REPATCH_BASE_FIXED_LINE_H_
#define REPATCH_BASE_FIXED_LINE_H_

#include <cstddef>
#include <cstdint>

namespace repatch::text {

class FixedLine {
 public:
  /// Writes into `out`, at most `size - 1` characters and a NUL; nothing when `size` is 0.
  FixedLine(char* out, std::size_t size) : p_(out), end_(size == 0 ? out : out + size - 1) {
    if (size != 0) *p_ = '\0';
  }
  FixedLine& text(const char* s) {
    while (s != nullptr && *s != '\0' && p_ < end_)
      *p_++ = *s++;
    terminate();
    return *this;
  }
  /// "0x" and lower-case hex digits.
  FixedLine& hex(std::uint64_t value) {
    text("0x");
    return digits(value, 16);
  }
  FixedLine& dec(std::uint64_t value) { return digits(value, 10); }

 private:
  FixedLine& digits(std::uint64_t value, unsigned base) {
    char reversed[20];  // 2^64 - 1 has 20 decimal digits
    int n = 0;
    do {
      reversed[n++] = "0123456789abcdef"[value % base];
      value /= base;
    } while (value != 0);
    while (n > 0 && p_ < end_)
      *p_++ = reversed[--n];
    terminate();
    return *this;
  }
  void terminate() {
    if (p_ <= end_) *p_ = '\0';
  }
  char* p_;
  char* end_;
};

}  // namespace repatch::text

#endif  // REPATCH_BASE_FIXED_LINE_H_
