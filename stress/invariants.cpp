#include "stress/invariants.h"

#include "guest/lock_state.h"
#include "guest/tlb.h"

namespace repatch::stress {

Invariants::Invariants(Engine* engine, Workload& workload, ViolationLog& violations,
                       std::vector<std::string> groups)
    : engine_(engine), workload_(workload), violations_(violations), groups_(std::move(groups)) {
  for (const std::string& g : groups_) {
    has_spinlock_ = has_spinlock_ || g == "spinlock";
    has_tlb_ = has_tlb_ || g == "tlb";
  }
}

void Invariants::check_group(const std::string& group) {
  if (const Status s = engine_->verify_group(group); !s.ok()) {
    violations_.record(Violation::kMixedVariant, s.error().to_string().c_str());
  }
}

void Invariants::check_state() {
  // The spinlock words are checked whether or not this commit named the group: every commit must
  // leave them in the encoding of the group's variant.
  const Result<std::string> spinlock = engine_->current_variant("spinlock");
  if (spinlock.ok()) {
    workload_.check_lock_encoding(spinlock.value() == "pv" ? guest::kPvVariant
                                                           : guest::kNativeVariant);
  }
  const Result<std::string> tlb_variant = engine_->current_variant("tlb");
  if (tlb_variant.ok() && tlb_variant.value() != "pv") {
    for (const sync::VcpuId id : workload_.ids()) {
      if (const std::uint8_t mark = tlb::resume_mark(id); mark != tlb::kNoMark) {
        const std::string line = "vCPU " + std::to_string(id) + " carries flush-on-resume mark " +
                                 std::to_string(mark) + " with the tlb group in " +
                                 tlb_variant.value() + ", whose resume hook ignores marks";
        violations_.record(Violation::kStateEncoding, line.c_str());
      }
    }
  }
}

void Invariants::after_commit(const SwitchRequest& request) {
  ++commits_checked_;
  for (const GroupChoice& choice : request.choices)
    check_group(choice.group);
  check_state();
}

void Invariants::at_end() {
  for (const std::string& g : groups_)
    check_group(g);
  if (const Status s = engine_->verify_sites(); !s.ok()) {
    violations_.record(Violation::kLeftoverState, s.error().to_string().c_str());
  }
  check_state();
  workload_.check_final();
}

}  // namespace repatch::stress
