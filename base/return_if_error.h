// Early return of a failure, for the common "call, and if it failed, pass its error up" step.
#ifndef REPATCH_BASE_RETURN_IF_ERROR_H_
#define REPATCH_BASE_RETURN_IF_ERROR_H_

#include <type_traits>

#include "repatch/error.h"

namespace repatch::detail {

template <typename T>
inline constexpr bool kIsStatusOrResult = false;
template <>
inline constexpr bool kIsStatusOrResult<Status> = true;
template <typename T>
inline constexpr bool kIsStatusOrResult<Result<T>> = true;

}  // namespace repatch::detail

/// Evaluates `expr`, a Status or a Result<T>, once; if it failed, returns its Error from the
/// enclosing function, which must return a Status or a Result<U>. A statement of its own (it needs
/// the trailing semicolon and can be the body of an unbraced if), so it cannot swallow an else.
/// Anything else than a Status or a Result, a bool say, does not compile: a failure must carry its
/// message up.
#define REPATCH_RETURN_IF_ERROR(expr)                                                \
  do {                                                                               \
    const auto& repatch_returned_if_error_ = (expr);                                 \
    static_assert(::repatch::detail::kIsStatusOrResult<                              \
                      std::remove_cvref_t<decltype(repatch_returned_if_error_)>>,    \
                  "REPATCH_RETURN_IF_ERROR takes a Status or a Result<T>");          \
    if (!repatch_returned_if_error_.ok()) return repatch_returned_if_error_.error(); \
  } while (false)

#endif  // REPATCH_BASE_RETURN_IF_ERROR_H_
