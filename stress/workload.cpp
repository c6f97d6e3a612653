#include "stress/workload.h"

#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "base/fixed_line.h"
#include "base/text.h"
#include "guest/demo_workload.h"
#include "guest/feature_workload.h"
#include "guest/lock_state.h"
#include "guest/machine.h"

namespace repatch::stress {
namespace {

// Pages the vCPUs translate and remap (a working set larger than a TLB, so that entries are
// evicted and refilled as well as shot down).
constexpr std::uint64_t kWorkingPages = 256;
constexpr std::size_t kDemoLocks = 4;
constexpr std::size_t kElidedLocks = 4;

// The workload whose NMI handler work runs. Release when it is set (after the NMI lock exists)
// pairs with the handler's acquire.
std::atomic<Workload*> g_active{nullptr};

// splitmix64: a small, fast generator whose sequence a seed fixes.
struct Random {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

}  // namespace

struct Workload::Guarded {
  explicit Guarded(const char* name) : lock(name) {}
  guest::SpinLock lock;
  std::uint64_t counter = 0;  // under `lock`
  std::atomic<int> inside{0};
};

Workload::Workload(const Scenario& scenario, ViolationLog& violations)
    : scenario_(scenario), violations_(violations) {
  guarded_.reserve(static_cast<std::size_t>(scenario.locks));
  for (int i = 0; i < scenario.locks; ++i)
    guarded_.push_back(std::make_unique<Guarded>("stress-counter"));
  module_increments_.assign(guarded_.size(), 0);
  nmi_lock_ = std::make_unique<guest::SpinLock>("stress-nmi");
  for (std::size_t i = 0; i < kDemoLocks; ++i)
    demo_locks_.push_back(std::make_unique<demo::Lock>());
  demo_counters_.assign(kDemoLocks, 0);
  for (std::size_t i = 0; i < kElidedLocks; ++i)
    elided_locks_.push_back(std::make_unique<features::ElidedLock>());
  elided_counters_.assign(kElidedLocks, 0);
  const auto n = static_cast<std::size_t>(scenario.vcpus);
  tallies_ = std::make_unique<VcpuTally[]>(n);
  increments_.assign(n, std::vector<std::uint64_t>(guarded_.size(), 0));
  demo_tallies_.assign(n, std::vector<std::uint64_t>(kDemoLocks, 0));
  elided_tallies_.assign(n, std::vector<std::uint64_t>(kElidedLocks, 0));
  left_ = std::make_unique<std::atomic<bool>[]>(n);
  ids_.assign(n, 0);
  tids_.assign(n, 0);
}

Workload::~Workload() {
  stop();
  if (!joined_) {
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }
  if (g_active.load() == this) {
    guest::set_machine_nmi_hook(nullptr);
    g_active.store(nullptr);
  }
}

Status Workload::start() {
  g_active.store(this, std::memory_order_release);
  guest::set_machine_nmi_hook(&Workload::nmi_hook);
  for (std::size_t i = 0; i < ids_.size(); ++i)
    threads_.emplace_back([this, i] { run_vcpu(i); });
  while (registered_.load() + failed_.load() < scenario_.vcpus)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  if (failed_.load() != 0) {
    stop();
    go_.store(true, std::memory_order_release);
    for (std::thread& t : threads_)
      t.join();
    joined_ = true;
    return Error(ErrorCode::kSystem, std::to_string(failed_.load()) +
                                         " vCPU threads could not register (sync::Vcpu::enter)");
  }
  for (const sync::VcpuId id : ids_)
    everyone_.set(id);
  // Release pairs with each vCPU's acquire of go_: they read ids_ and everyone_ only after it.
  go_.store(true, std::memory_order_release);
  return {};
}

void Workload::stop() {
  stop_.store(true, std::memory_order_relaxed);
}

bool Workload::join_within(std::chrono::milliseconds timeout) {
  if (joined_) return true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (finished_.load(std::memory_order_acquire) < static_cast<int>(threads_.size())) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (std::thread& t : threads_)
    t.join();
  joined_ = true;
  guest::set_machine_nmi_hook(nullptr);
  g_active.store(nullptr);
  return true;
}

void Workload::run_vcpu(std::size_t index) {
  Result<std::unique_ptr<sync::Vcpu>> entered = sync::Vcpu::enter();
  if (!entered.ok()) {
    failed_.fetch_add(1);
    left_[index].store(true);
    finished_.fetch_add(1, std::memory_order_release);
    return;
  }
  sync::Vcpu& self = *entered.value();
  tlb::attach();
  ids_[index] = self.id();
  tids_[index] = static_cast<pid_t>(syscall(SYS_gettid));
  registered_.fetch_add(1);
  while (!go_.load(std::memory_order_acquire))
    std::this_thread::sleep_for(std::chrono::microseconds(100));

  VcpuTally& tally = tallies_[index];
  std::vector<std::uint64_t>& increments = increments_[index];
  std::vector<std::uint64_t>& demo_tally = demo_tallies_[index];
  std::vector<std::uint64_t>& elided_tally = elided_tallies_[index];
  Random random{scenario_.seed * 0x100000001b3ull + index};
  char line[ViolationLog::kLineSize];
  while (!stop_.load(std::memory_order_relaxed)) {
    const std::uint64_t r = random.next();
    std::uint64_t ops = 2;

    // A counter under one of the locks.
    const std::size_t which = r % guarded_.size();
    Guarded& g = *guarded_[which];
    guest::spin_lock(&g.lock);
    if (g.inside.fetch_add(1, std::memory_order_relaxed) != 0) {
      text::FixedLine(line, sizeof line)
          .text("vCPU ")
          .dec(self.id())
          .text(" acquired counter lock #")
          .dec(which)
          .text(" (word ")
          .hex(g.lock.load_word())
          .text(") while another holder was inside it");
      violations_.record(Violation::kMutualExclusion, line);
    }
    const bool pv = guest::word::tag(g.lock.load_word()) == guest::word::kTagPv;
    ++g.counter;
    ++increments[which];
    g.inside.fetch_sub(1, std::memory_order_relaxed);
    guest::spin_unlock(&g.lock);
    tally.add(pv ? Counter::kAcquisitionsPv : Counter::kAcquisitionsNative);

    // Translations through this vCPU's TLB, and now and then a remap with its shootdown.
    if (((r >> 20) & 3) == 0) {
      const std::uint64_t page = (r >> 24) % kWorkingPages;
      const tlb::Translation t = tlb::translate(page);
      tally.add(Counter::kTranslations);
      if (t.stale) {
        text::FixedLine(line, sizeof line)
            .text("vCPU ")
            .dec(self.id())
            .text(" translated page ")
            .dec(page)
            .text(" at generation ")
            .dec(t.generation)
            .text(", older than its last completed shootdown (")
            .dec(tlb::pte_flushed(page))
            .text(")");
        violations_.record(Violation::kStaleTlbRead, line);
      }
    }
    if (((r >> 34) & 4095) == 0) {
      const std::uint64_t page = (r >> 44) % kWorkingPages;
      tlb::Shootdown report{};
      tlb::remap(page, static_cast<std::uint32_t>(r >> 32), everyone_, &report);
      tally.add(Counter::kShootdowns);
      tally.add(Counter::kShootdownsMarked, report.marked);
      ++ops;
    }

    // The demo guest's sites.
    if (((r >> 54) & 7) == 0) {
      const std::size_t d = (r >> 57) % kDemoLocks;
      demo::locked_increment(demo_locks_[d].get(), &demo_counters_[d]);
      ++demo_tally[d];
      tally.add(Counter::kDemoIncrements);
      const std::uint32_t clock = demo::read_clock();
      if (clock != demo::kFixedClock && clock != demo_clock_value) {
        text::FixedLine(line, sizeof line)
            .text("vCPU ")
            .dec(self.id())
            .text(" read demo_clock ")
            .hex(clock)
            .text(", which neither variant returns");
        violations_.record(Violation::kWrongResult, line);
      }
      demo::owner_preempted(self.id());
      demo::flush(&demo_counters_[d]);
      ops += 5;
    }

    // The feature-keyed sites (guest/feature_ops.h), which a simulated microcode update switches.
    if (((r >> 54) & 7) == 1) {
      const std::size_t e = (r >> 57) % kElidedLocks;
      features::elided_increment(elided_locks_[e].get(), &elided_counters_[e]);
      ++elided_tally[e];
      tally.add(Counter::kElidedIncrements);
      (void)features::caller_cpu();
      features::flush_line(&elided_counters_[e]);
      ops += 4;
    }

    // Rarely, a short halt: offline, as an idle CPU is, so that a switch does not wait for it
    // and a preemption may land while it is out.
    if (((r >> 40) & 2047) == 0) {
      self.go_offline();
      const timespec nap{0, 100000};
      nanosleep(&nap, nullptr);
      self.go_online();
      tally.add(Counter::kIdles);
    }

    tlb::checkpoint();
    self.quiescent_state();
    tally.add(Counter::kOps, ops);
    tally.iterations.fetch_add(1, std::memory_order_relaxed);
  }
  entered.value().reset();
  left_[index].store(true);
  // Release pairs with join_within's acquire: the tallies are complete before it counts this one.
  finished_.fetch_add(1, std::memory_order_release);
}

void Workload::nmi_hook(sync::VcpuId self, void*) {
  Workload* w = g_active.load(std::memory_order_acquire);
  if (w == nullptr) return;
  // steady_clock reads CLOCK_MONOTONIC through the vDSO: no lock, async-signal-safe.
  const auto entered = std::chrono::steady_clock::now();
  guest::spin_lock(w->nmi_lock_.get());
  if (w->nmi_inside_.fetch_add(1, std::memory_order_relaxed) != 0) {
    char line[128];
    text::FixedLine(line, sizeof line)
        .text("an NMI handler on vCPU ")
        .dec(self)
        .text(" acquired the NMI lock while another handler was inside it");
    w->violations_.record(Violation::kMutualExclusion, line);
  }
  ++w->nmi_counter_;
  w->nmi_inside_.fetch_sub(1, std::memory_order_relaxed);
  guest::spin_unlock(w->nmi_lock_.get());
  w->nmi_runs_[self].fetch_add(1, std::memory_order_relaxed);
  w->nmi_ns_[self].fetch_add(
      static_cast<std::uint64_t>((std::chrono::steady_clock::now() - entered).count()),
      std::memory_order_relaxed);
}

std::vector<std::size_t> Workload::unfinished() const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < ids_.size(); ++i)
    if (!left_[i].load()) out.push_back(i);
  return out;
}

std::uint64_t Workload::nmi_runs() const {
  std::uint64_t sum = 0;
  for (const auto& runs : nmi_runs_)
    sum += runs.load(std::memory_order_relaxed);
  return sum;
}

WorkloadCounts Workload::totals() const {
  WorkloadCounts t;
  for (const CounterSpec& spec : workload_counters()) {
    std::uint64_t& total = t[spec.counter];
    switch (spec.source) {
      case CounterSource::kVcpuTallies:
        for (std::size_t i = 0; i < ids_.size(); ++i) {
          total += tallies_[i].counts[static_cast<std::size_t>(spec.counter)].load(
              std::memory_order_relaxed);
        }
        break;
      case CounterSource::kNmiHandlers:
        total = nmi_runs();
        break;
      case CounterSource::kGuest:
        total = spec.read_guest();
        break;
    }
  }
  return t;
}

void Workload::check_lock_encoding(int spinlock_variant) {
  const std::uint64_t want = guest::word::tag_of_variant(spinlock_variant);
  auto check = [&](const guest::SpinLock& lock, const char* what, std::size_t index) {
    const std::uint64_t word = lock.load_word();
    if (guest::word::tag(word) == want) return;
    std::string line = std::string(what) + " #" + std::to_string(index) + " is in " +
                       guest::encoding_name(word) + " encoding (word " + text::hex(word) +
                       ") after the spinlock group committed to " +
                       (spinlock_variant == guest::kPvVariant ? "pv" : "native");
    violations_.record(Violation::kStateEncoding, line.c_str());
  };
  for (std::size_t i = 0; i < guarded_.size(); ++i)
    check(guarded_[i]->lock, "counter lock", i);
  check(*nmi_lock_, "the NMI lock", 0);
}

void Workload::run_module_pass(
    const std::function<void(guest::SpinLock*, std::uint64_t*, std::atomic<int>*,
                             std::atomic<bool>*)>& add,
    std::size_t round, int adds) {
  const std::size_t which = round % guarded_.size();
  Guarded& g = *guarded_[which];
  std::atomic<bool> overlap{false};
  add(&g.lock, &g.counter, &g.inside, &overlap);
  module_increments_[which] += static_cast<std::uint64_t>(adds);
  if (overlap.load()) {
    const std::string line = "a module's sites acquired counter lock #" + std::to_string(which) +
                             " while another holder was inside it";
    violations_.record(Violation::kMutualExclusion, line.c_str());
  }
}

void Workload::check_final() {
  for (std::size_t l = 0; l < guarded_.size(); ++l) {
    std::uint64_t tallied = module_increments_[l];
    for (const auto& row : increments_)
      tallied += row[l];
    if (tallied != guarded_[l]->counter) {
      const std::string line =
          "counter lock #" + std::to_string(l) + " guards " + std::to_string(guarded_[l]->counter) +
          " increments, the vCPUs (and modules) tallied " + std::to_string(tallied);
      violations_.record(Violation::kLostUpdate, line.c_str());
    }
    if (guest::classify(guarded_[l]->lock.load_word()) != guest::LockState::kUnlocked) {
      const std::string line =
          "counter lock #" + std::to_string(l) + " is " +
          guest::lock_state_name(guest::classify(guarded_[l]->lock.load_word())) + " at the end";
      violations_.record(Violation::kLeftoverState, line.c_str());
    }
  }
  for (std::size_t d = 0; d < demo_counters_.size(); ++d) {
    std::uint64_t tallied = 0;
    for (const auto& row : demo_tallies_)
      tallied += row[d];
    if (tallied != demo_counters_[d]) {
      const std::string line = "demo lock #" + std::to_string(d) + " guards " +
                               std::to_string(demo_counters_[d]) +
                               " increments, the vCPUs tallied " + std::to_string(tallied);
      violations_.record(Violation::kLostUpdate, line.c_str());
    }
  }
  for (std::size_t e = 0; e < elided_counters_.size(); ++e) {
    std::uint64_t tallied = 0;
    for (const auto& row : elided_tallies_)
      tallied += row[e];
    if (tallied != elided_counters_[e]) {
      const std::string line = "elided lock #" + std::to_string(e) + " guards " +
                               std::to_string(elided_counters_[e]) +
                               " increments, the vCPUs tallied " + std::to_string(tallied);
      violations_.record(Violation::kLostUpdate, line.c_str());
    }
    if (elided_locks_[e]->locked.load() != 0) {
      violations_.record(Violation::kLeftoverState,
                         ("elided lock #" + std::to_string(e) + " is held at the end").c_str());
    }
  }
  if (nmi_counter_ != nmi_runs()) {
    const std::string line = "the NMI lock guards " + std::to_string(nmi_counter_) +
                             " increments, the NMI handlers tallied " + std::to_string(nmi_runs());
    violations_.record(Violation::kLostUpdate, line.c_str());
  }
  if (guest::classify(nmi_lock_->load_word()) != guest::LockState::kUnlocked) {
    violations_.record(Violation::kLeftoverState, "the NMI lock is not unlocked at the end");
  }
}

}  // namespace repatch::stress
