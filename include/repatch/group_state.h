// State that a group's ops keep in memory, in an encoding that depends on the variant (DESIGN H6,
// H10): a ticket lock's head and tail against a paravirt lock's locked byte and waiter count; a
// paravirt TLB's flush-on-resume marks.
//
// A group with such state registers a GroupState (Engine::set_group_state) before its first
// switch. During a switch, after the INT3 fence has made every site of the group trap, the
// executor finishing the switch (the primary, or an NMI or #BP handler that reached the fence)
// asks can_convert() before it decides the direction, and calls convert() once the switch goes
// forward, before any new code is written. Nobody runs an op of the group in between: sites trap,
// and vCPUs inside an op body were refused by the quiescence check. Waits in op bodies that
// see their object converted under them must give up and return to their site, which then runs
// the new variant ("restart").
#ifndef REPATCH_GROUP_STATE_H_
#define REPATCH_GROUP_STATE_H_

#include <cstddef>

namespace repatch {

class GroupState {
 public:
  virtual ~GroupState() = default;

  /// Whether every live object of the group can be mapped from variant `from` to variant `to`
  /// (indices into the group's variant list). If not, writes one line naming the first object that
  /// cannot (address, its name where it has one, its state in `from`'s encoding and why `to` has
  /// no equivalent) into `why` (NUL-terminated, cut at `size`) and returns false: the switch is
  /// then refused, with nothing written. Runs under the stop or in a signal handler:
  /// async-signal-safe, no allocation, no lock that ordinary code holds.
  virtual bool can_convert(int from, int to, char* why, std::size_t size) noexcept = 0;

  /// Converts every live object from `from`'s encoding to `to`'s, and wakes any waiter that sleeps
  /// in `from`'s encoding so that it restarts. Idempotent and safe to run on several executors at
  /// once: each object's step is a compare-and-swap from its `from` encoding, so a late or second
  /// run finds it converted and leaves it. Same context rules as can_convert().
  virtual void convert(int from, int to) noexcept = 0;
};

}  // namespace repatch

#endif  // REPATCH_GROUP_STATE_H_
