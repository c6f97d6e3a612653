// Clang's thread-safety attributes, so that `clang -Wthread-safety` proves which lock guards which
// state and who must hold it. They expand to nothing for other compilers (GCC has no such
// analysis), so the annotated code builds everywhere; ./scripts/test compiles it with clang and
// -Wthread-safety -Werror.
//
// libstdc++'s std::mutex carries no attributes: state guarded by a lock uses base::Mutex
// (base/mutex.h), which does.
#ifndef REPATCH_BASE_THREAD_ANNOTATIONS_H_
#define REPATCH_BASE_THREAD_ANNOTATIONS_H_

#if defined(__clang__)
#define REPATCH_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define REPATCH_THREAD_ANNOTATION(x)
#endif

/// A type whose objects are locks (a "capability" in Clang's terms).
#define REPATCH_CAPABILITY(name) REPATCH_THREAD_ANNOTATION(capability(name))
/// A type that holds a lock from its construction to its destruction (a lock guard).
#define REPATCH_SCOPED_CAPABILITY REPATCH_THREAD_ANNOTATION(scoped_lockable)
/// A member or variable that is read and written only with the lock held.
#define REPATCH_GUARDED_BY(lock) REPATCH_THREAD_ANNOTATION(guarded_by(lock))
/// A pointer whose pointee is read and written only with the lock held.
#define REPATCH_PT_GUARDED_BY(lock) REPATCH_THREAD_ANNOTATION(pt_guarded_by(lock))
/// A function its caller must call with the lock(s) held.
#define REPATCH_REQUIRES(...) REPATCH_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
/// A function its caller must call without the lock(s) (it takes them itself).
#define REPATCH_EXCLUDES(...) REPATCH_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
/// A function that returns with the lock(s) held.
#define REPATCH_ACQUIRE(...) REPATCH_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
/// A function that returns with the lock(s) released.
#define REPATCH_RELEASE(...) REPATCH_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
/// A function that returns with the lock held if it returns `result`.
#define REPATCH_TRY_ACQUIRE(...) REPATCH_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
/// A function that checks at run time that the lock is held (and stops the program otherwise).
#define REPATCH_ASSERT_CAPABILITY(lock) REPATCH_THREAD_ANNOTATION(assert_capability(lock))
/// A function whose locking the analysis cannot follow; say why wherever it is used.
#define REPATCH_NO_THREAD_SAFETY_ANALYSIS REPATCH_THREAD_ANNOTATION(no_thread_safety_analysis)

#endif  // REPATCH_BASE_THREAD_ANNOTATIONS_H_
