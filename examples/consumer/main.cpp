// A consumer of the installed library: it declares its own group of two ops, boots in the variant
// named on the command line, checks that its sites run that variant, switches to the other one
// live and checks again. Built from this file linked with librepatch.a (consumer-static) and with
// librepatch.so (consumer-shared); it exits with status 1 and says why whenever the engine did not
// put its own sites in the variant.
//
//   consumer-static plain|atomic
//   consumer-shared plain|atomic
//
// With `module PATH` it loads a module (module.cpp) with dlopen() after boot instead, runs the
// module's pair of ops on 4 vCPU threads and on 1 thread it never registers, switches the
// module's group 10,000 times meanwhile, checks that every pass saw one variant for both ops,
// and unloads the module.
//
//   consumer-static module PATH
#include <dlfcn.h>
#include <repatch/engine.h>
#include <repatch/op.h>
#include <repatch/vcpu.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

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

// Prints the sites, and whether both are in `variant` and the counts are those expected; true if
// they are. A site the engine does not hold, or holds in another variant, makes it false.
bool check(const char* name, const repatch::Engine& engine, const char* variant,
           std::uint64_t value, std::uint64_t expected_value, std::uint64_t expected_plain,
           std::uint64_t expected_atomic) {
  const repatch::EngineStatus status = engine.status();
  for (const repatch::SiteStatus& site : status.sites) {
    std::printf("%-13s %-7s %s\n", site.op.c_str(), site.variant.c_str(), site.instruction.c_str());
  }
  if (status.sites.size() != 2) {
    std::fprintf(stderr, "%s: the engine holds %zu sites; this program has 2 of its own\n", name,
                 status.sites.size());
  }
  const bool ok = value == expected_value && plain_notes == expected_plain &&
                  atomic_notes == expected_atomic && status.sites.size() == 2 &&
                  status.sites[0].variant == variant && status.sites[1].variant == variant;
  std::printf("%s: %s variant, value %llu, notes plain %llu atomic %llu: %s\n", name, variant,
              static_cast<unsigned long long>(value), static_cast<unsigned long long>(plain_notes),
              static_cast<unsigned long long>(atomic_notes), ok ? "ok" : "WRONG");
  return ok;
}

// Whether `path` is among the engine's objects (and not refused).
bool engine_holds(const repatch::Engine& engine, const std::string& path) {
  for (const repatch::ModuleStatus& m : engine.modules()) {
    if (m.name.find(path) != std::string::npos) return m.refusal.empty();
  }
  return false;
}

int run_module(const char* name, const char* path) {
  repatch::Result<repatch::Engine*> booted = repatch::boot();
  if (!booted.ok()) {
    std::fprintf(stderr, "%s: boot failed: %s\n", name, booted.error().to_string().c_str());
    return 1;
  }
  repatch::Engine& engine = *booted.value();
  void* module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (module == nullptr) {
    std::fprintf(stderr, "%s: dlopen(%s) failed: %s\n", name, path, dlerror());
    return 1;
  }
  if (!engine_holds(engine, path)) {
    std::fprintf(stderr, "%s: the engine does not hold the module's sites\n", name);
    return 1;
  }
  using Pass = int();
  auto* pass = reinterpret_cast<Pass*>(dlsym(module, "consumer_module_pass"));
  if (pass == nullptr) {
    std::fprintf(stderr, "%s: the module has no consumer_module_pass\n", name);
    return 1;
  }

  // Passes by the variant they saw (index 1 and 2), and those that saw two (index 0); passes that
  // gave way to a switch running are retried after a yield and not counted.
  std::atomic<std::uint64_t> seen[3] = {};
  std::atomic<bool> stop{false};
  std::atomic<int> registration_failures{0};
  const auto run_passes = [&](repatch::VcpuRegistration* vcpu) {
    while (!stop.load(std::memory_order_relaxed)) {
      const int variant = pass();
      if (variant == 0) {
        std::this_thread::yield();
      } else {
        seen[variant < 0 ? 0 : variant].fetch_add(1, std::memory_order_relaxed);
      }
      if (vcpu != nullptr) vcpu->quiescent_state();
    }
  };
  std::vector<std::thread> threads;
  for (int v = 0; v < 4; ++v) {
    threads.emplace_back([&] {
      repatch::Result<repatch::VcpuRegistration> vcpu = repatch::VcpuRegistration::enter();
      if (!vcpu.ok()) {
        registration_failures.fetch_add(1);
        return;
      }
      run_passes(&vcpu.value());
    });
  }
  threads.emplace_back([&] { run_passes(nullptr); });  // never registered

  int failed_switches = 0;
  for (int i = 0; i < 10000; ++i) {
    const repatch::SwitchOutcome r = engine.switch_groups({{"pair", i % 2 == 0 ? "two" : "one"}});
    if (!r.committed()) {
      if (++failed_switches == 1) {
        std::fprintf(stderr, "%s: a switch failed: %s\n", name,
                     r.status.error().to_string().c_str());
      }
    }
  }
  stop.store(true);
  for (std::thread& t : threads)
    t.join();
  const bool unloaded = dlclose(module) == 0 && !engine_holds(engine, path);
  const bool ok = registration_failures.load() == 0 && failed_switches == 0 &&
                  seen[0].load() == 0 && seen[1].load() > 0 && seen[2].load() > 0 && unloaded;
  std::printf(
      "%s: module %s: 10000 switches (%d failed), passes seeing variant one %llu, two %llu, "
      "both %llu; unloaded %s: %s\n",
      name, path, failed_switches, static_cast<unsigned long long>(seen[1].load()),
      static_cast<unsigned long long>(seen[2].load()),
      static_cast<unsigned long long>(seen[0].load()), unloaded ? "yes" : "no",
      ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}

int main(int argc, char** argv) {
  const char* slash = argc > 0 ? std::strrchr(argv[0], '/') : nullptr;
  const char* name = slash != nullptr ? slash + 1 : (argc > 0 ? argv[0] : "consumer");
  if (argc == 3 && std::strcmp(argv[1], "module") == 0) return run_module(name, argv[2]);
  if (argc != 2 || (std::strcmp(argv[1], "plain") != 0 && std::strcmp(argv[1], "atomic") != 0)) {
    std::fprintf(stderr, "usage: %s plain|atomic\n       %s module PATH\n", name, name);
    return 2;
  }
  // Boots in the variant named, counts, then switches live to the other one and counts again.
  const bool atomic_first = std::strcmp(argv[1], "atomic") == 0;
  const char* first = argv[1];
  const char* second = atomic_first ? "plain" : "atomic";
  repatch::Result<repatch::Engine*> engine = repatch::boot({.initial = {{"counter", first}}});
  if (!engine.ok()) {
    std::fprintf(stderr, "%s: boot failed: %s\n", name, engine.error().to_string().c_str());
    return 1;
  }
  std::uint64_t value = 0;
  for (int i = 0; i < 1000; ++i)
    count(&value);
  if (!check(name, *engine.value(), first, value, 1000, atomic_first ? 0 : 1000,
             atomic_first ? 1000 : 0)) {
    return 1;
  }

  const repatch::SwitchOutcome switched = engine.value()->switch_groups({{"counter", second}});
  if (!switched.committed()) {
    std::fprintf(stderr, "%s: switch to %s failed: %s\n", name, second,
                 switched.status.error().to_string().c_str());
    return 1;
  }
  for (int i = 0; i < 1000; ++i)
    count(&value);
  return check(name, *engine.value(), second, value, 2000, 1000, 1000) ? 0 : 1;
}
