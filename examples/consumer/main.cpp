// A consumer of the installed library: it declares its own group of two ops, boots in the variant
// named on the command line, and checks that its sites run that variant.
//
//   consumer plain|atomic
#include <repatch/engine.h>
#include <repatch/op.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

REPATCH_DECLARE_GROUP(counter);
REPATCH_DECLARE_OP(counter_inc, 8);
REPATCH_DECLARE_OP(counter_note, 8);

extern "C" {
std::uint64_t plain_notes = 0;
std::uint64_t atomic_notes = 0;
// `used`: only the thunks' assembly calls them, which link-time optimisation cannot see.
__attribute__((used)) void note_plain() {
  ++plain_notes;
}
__attribute__((used)) void note_atomic() {
  __atomic_fetch_add(&atomic_notes, 1, __ATOMIC_RELAXED);
}
}

// The counter group: a plain increment for one CPU, a locked one for many. Both ops switch
// together, so a "plain" increment never pairs with an "atomic" note.
REPATCH_DEFINE_GROUP(counter, 0, "plain", "atomic");
REPATCH_DEFINE_OP(counter_inc, counter, plain);
REPATCH_INLINE_VARIANT(counter_inc, plain, "incq (%rdi)");
REPATCH_INLINE_VARIANT(counter_inc, atomic, "lock incq (%rdi)");
REPATCH_DEFINE_OP(counter_note, counter, plain);
REPATCH_CALLEE_SAVE_THUNK(note_plain_thunk, note_plain, void);
REPATCH_CALLEE_SAVE_THUNK(note_atomic_thunk, note_atomic, void);
REPATCH_CALL_VARIANT(counter_note, plain, note_plain_thunk);
REPATCH_CALL_VARIANT(counter_note, atomic, note_atomic_thunk);

__attribute__((noinline)) void count(std::uint64_t* value) {
  REPATCH_SITE(counter_inc, (), "D"(value));
  REPATCH_SITE(counter_note, ());
}

int main(int argc, char** argv) {
  if (argc != 2 || (std::strcmp(argv[1], "plain") != 0 && std::strcmp(argv[1], "atomic") != 0)) {
    std::fprintf(stderr, "usage: consumer plain|atomic\n");
    return 2;
  }
  repatch::Result<repatch::Engine*> engine = repatch::boot({.initial = {{"counter", argv[1]}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "consumer: boot failed: %s\n", engine.error().to_string().c_str());
    return 1;
  }
  std::uint64_t value = 0;
  for (int i = 0; i < 1000; ++i)
    count(&value);

  const bool atomic = std::strcmp(argv[1], "atomic") == 0;
  const repatch::EngineStatus status = engine.value()->status();
  for (const repatch::SiteStatus& site : status.sites) {
    std::printf("%-13s %-7s %s\n", site.op.c_str(), site.variant.c_str(), site.instruction.c_str());
  }
  const bool ok = value == 1000 && (atomic ? atomic_notes : plain_notes) == 1000 &&
                  (atomic ? plain_notes : atomic_notes) == 0 && status.sites.size() == 2 &&
                  status.sites[0].variant == argv[1];
  std::printf("consumer: %s variant, value %llu, notes plain %llu atomic %llu: %s\n", argv[1],
              static_cast<unsigned long long>(value), static_cast<unsigned long long>(plain_notes),
              static_cast<unsigned long long>(atomic_notes), ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
