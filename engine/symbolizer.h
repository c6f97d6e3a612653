// Names code addresses for people: "demo_spin(Lock*)+0x1c".
//
// Profilers and debuggers cannot name code in the remapped text (it shows as a deleted memfd), so
// repatch names its own sites. Symbols come from the executable's full symbol table (.symtab, read
// from /proc/self/exe) and, for code in shared objects, from dladdr. Loading allocates: use it in
// normal context only (error messages, status), never in a signal handler or under stop.
#ifndef REPATCH_ENGINE_SYMBOLIZER_H_
#define REPATCH_ENGINE_SYMBOLIZER_H_

#include <cstdint>
#include <string>
#include <vector>

namespace repatch::engine {

class Symbolizer {
 public:
  /// Reads the executable's symbol table. Never fails: without one, only dladdr is used.
  Symbolizer();

  /// "function+0xoff" (demangled), or "" when no symbol covers `address`.
  std::string name(std::uintptr_t address) const;

 private:
  struct Symbol {
    std::uintptr_t begin, end;
    std::string name;
  };
  std::vector<Symbol> symbols_;  // sorted by begin
};

/// The process-wide symbolizer, loaded on first use.
const Symbolizer& symbolizer();

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_SYMBOLIZER_H_
