// The invariants a stress run checks outside the vCPUs' own loops: right after every commit, and
// once at the end.
//
// After each commit (on the switcher's thread, before the next switch can start):
//  - every switched group is wholly in its new variant: every site's bytes are that variant's
//    image (Engine::verify_group), so no vCPU can run a mix;
//  - the groups' in-memory state is in the form of their variant: every spinlock word in the
//    encoding of the spinlock group's variant, and, with the tlb group in native, no vCPU left
//    with a flush-on-resume mark that the native resume hook would never honour.
// At the end (after the vCPUs have left): every group of the run wholly in one variant, every
// site as the table says (Engine::verify_sites), and the workload's final checks (no lost update,
// every lock unlocked).
#ifndef REPATCH_STRESS_INVARIANTS_H_
#define REPATCH_STRESS_INVARIANTS_H_

#include <string>
#include <vector>

#include "repatch/engine.h"
#include "stress/switch_decider.h"
#include "stress/violations.h"
#include "stress/workload.h"

namespace repatch::stress {

class Invariants {
 public:
  /// `groups`: every group the run switches. All references outlive this object.
  Invariants(Engine* engine, Workload& workload, ViolationLog& violations,
             std::vector<std::string> groups);

  /// The after-commit checks for `request`, just committed. Normal context, no switch running.
  void after_commit(const SwitchRequest& request);
  /// The end-of-run checks. After Workload::join_within() succeeded.
  void at_end();
  /// After-commit checks run.
  std::uint64_t commits_checked() const { return commits_checked_; }

 private:
  void check_group(const std::string& group);
  void check_state();
  Engine* engine_;
  Workload& workload_;
  ViolationLog& violations_;
  std::vector<std::string> groups_;
  bool has_spinlock_ = false;
  bool has_tlb_ = false;
  std::uint64_t commits_checked_ = 0;
};

}  // namespace repatch::stress

#endif  // REPATCH_STRESS_INVARIANTS_H_
