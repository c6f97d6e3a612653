// A parser of /proc/<pid>/maps.
//
// The memfd poker uses it to check that a range is plain code before it remaps it, the procmem
// poker to explain a refused write, and the W^X test to scan every mapping. Reading and parsing
// allocate: never call from a signal handler or while other vCPUs are stopped.
#ifndef REPATCH_ARCH_X86_PROC_MAPS_H_
#define REPATCH_ARCH_X86_PROC_MAPS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "repatch/error.h"

namespace repatch::x86 {

/// One line of /proc/<pid>/maps.
struct MapEntry {
  std::uintptr_t begin = 0;  ///< First address.
  std::uintptr_t end = 0;    ///< One past the last address.
  bool r = false, w = false, x = false;
  bool shared = false;       ///< 's' (MAP_SHARED) rather than 'p' (private, copy-on-write).
  std::uint64_t offset = 0;  ///< Offset into the mapped file.
  std::uint64_t inode = 0;   ///< 0 for anonymous memory.
  /// File path, "[stack]"-like pseudo name, or empty for anonymous memory. A file that was
  /// unlinked (every memfd) ends in " (deleted)".
  std::string path;

  bool contains(std::uintptr_t address) const { return address >= begin && address < end; }
};

/// Parses the text of a maps file. Lines that are empty are skipped. A malformed line fails the
/// whole parse with kInvalidArgument naming the line number and its text.
Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text);

/// Reads and parses a maps file. Fails with kSystem (naming the file and errno's text) when it
/// cannot be read, kInvalidArgument when it does not parse.
Result<std::vector<MapEntry>> read_proc_maps(const char* path = "/proc/self/maps");

/// The entry that contains `address`, or nullptr. `maps` must be sorted by address, as the kernel
/// writes it.
const MapEntry* find_mapping(const std::vector<MapEntry>& maps, std::uintptr_t address);

/// "7f00-7f10 r-xs /memfd:x (deleted)": one entry for error messages.
std::string describe_mapping(const MapEntry& entry);

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_PROC_MAPS_H_
