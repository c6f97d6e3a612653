// Stores into code through a writable alias (the memfd backend of text_poker.h), inline, so that
// a writer of thousands of sites pays no call per store. The address given is the alias address;
// the caller owns getting it right (TextPoker::alias_delta()).
#ifndef REPATCH_ARCH_X86_CODE_STORE_H_
#define REPATCH_ARCH_X86_CODE_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace repatch::x86 {
namespace detail {
template <typename T = void>
inline T* code_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);  // NOLINT(performance-no-int-to-ptr)
}
}  // namespace detail

// Stores `n` bytes in address order, each store naturally aligned and as wide as alignment and
// the remaining length allow (8, 4, 2 or 1 bytes), so that an aligned 8-byte window is replaced
// by one single-copy-atomic store as data. That does not make it atomic for instruction fetch on
// another CPU: the architecture promises nothing for cross-modifying code without serialisation,
// which is why live switches use the INT3 protocol. Relaxed atomic builtins rather than plain
// stores: the compiler may neither tear them nor turn the loop into a call to memcpy.
inline void store_code_bytes(std::uintptr_t dst, const std::uint8_t* src, std::size_t n) noexcept {
  // The source may be unaligned. __builtin_memcpy of a constant size is expanded inline at every
  // optimisation level into one load: no libc call.
  auto load = [](const std::uint8_t* p, auto zero) {
    decltype(zero) v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  };
  while (n > 0) {
    if ((dst & 7) == 0 && n >= 8) {
      __atomic_store_n(detail::code_ptr<std::uint64_t>(dst), load(src, std::uint64_t{}),
                       __ATOMIC_RELAXED);
      dst += 8, src += 8, n -= 8;
    } else if ((dst & 3) == 0 && n >= 4) {
      __atomic_store_n(detail::code_ptr<std::uint32_t>(dst), load(src, std::uint32_t{}),
                       __ATOMIC_RELAXED);
      dst += 4, src += 4, n -= 4;
    } else if ((dst & 1) == 0 && n >= 2) {
      __atomic_store_n(detail::code_ptr<std::uint16_t>(dst), load(src, std::uint16_t{}),
                       __ATOMIC_RELAXED);
      dst += 2, src += 2, n -= 2;
    } else {
      __atomic_store_n(detail::code_ptr<std::uint8_t>(dst), *src, __ATOMIC_RELAXED);
      dst += 1, src += 1, n -= 1;
    }
  }
  // Orders the code stores before any later store of this thread, such as the flag that tells
  // other vCPUs to serialise and run the new code (they pair it with an acquire load). On x86
  // this only stops the compiler from sinking the stores; the CPU keeps stores in order.
  std::atomic_thread_fence(std::memory_order_release);
}

/// If the byte at `dst` holds `expected`, replaces it with `desired`; returns whether it did.
/// seq_cst: a locked cmpxchg, which orders this write with every load and store around it (an
/// executor's later scan of in-op depths, the primary's later publish of a state).
inline bool compare_exchange_code_byte(std::uintptr_t dst, std::uint8_t expected,
                                       std::uint8_t desired) noexcept {
  return __atomic_compare_exchange_n(detail::code_ptr<std::uint8_t>(dst), &expected, desired, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_CODE_STORE_H_
