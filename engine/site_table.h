// The retained patch table of one object (the program, or a module): every site it holds, kept
// after boot (or after its load).
//
// Eight bytes per site (the kernel's paravirt site entry is sixteen, and it is discarded after
// boot). Entries are sorted by group, and by address inside each group, so that the index by
// group is just each group's [begin, end) run and costs nothing per site. The layout never
// changes after boot; only each entry's `variant` byte does. Lookups by address take no lock and
// touch no allocator, so signal handlers (#BP, NMI) may use them.
#ifndef REPATCH_ENGINE_SITE_TABLE_H_
#define REPATCH_ENGINE_SITE_TABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/catalog.h"
#include "repatch/error.h"
#include "repatch/op.h"

namespace repatch::engine {

struct SiteEntry {
  std::uint32_t offset;  ///< from SiteTable::base()
  OpIndex op;
  std::uint8_t length;
  /// Which image the site holds now: the variant in the low seven bits (kIndirect: unpatched),
  /// plus kAltPadBit when its padding uses x86::kAltPadPrefix instead of x86::kPadPrefix. A live
  /// switch alternates the padding so that every site's first byte changes (see
  /// docs/switch-protocol.md, "the first byte must change"). Written only by the thread that
  /// writes the site's bytes (boot, the switch primary after its stop); read by anyone (relaxed:
  /// readers use it as a hint and always compare the bytes before writing).
  std::atomic<std::uint8_t> held;

  static constexpr std::uint8_t kAltPadBit = 0x80;

  VariantIndex variant() const {
    return static_cast<VariantIndex>(held.load(std::memory_order_relaxed) & ~kAltPadBit);
  }
  bool alt_pad() const { return (held.load(std::memory_order_relaxed) & kAltPadBit) != 0; }
  void set_held(VariantIndex v, bool alt) {
    held.store(static_cast<std::uint8_t>(v | (alt ? kAltPadBit : 0)), std::memory_order_relaxed);
  }
};
static_assert(sizeof(SiteEntry) == 8, "the retained table promises 8 bytes per site");

class SiteTable {
 public:
  SiteTable() = default;
  SiteTable(SiteTable&&) noexcept;
  SiteTable& operator=(SiteTable&&) noexcept;

  /// Builds the table from site records. Fails with kBadSiteRecord, naming the addresses, when a
  /// record names an unknown op, two records are the same site, two sites overlap, or the sites
  /// span more than 4 GiB.
  static Result<SiteTable> build(std::span<const abi::SiteRecord> records, const Catalog& catalog);

  std::span<const SiteEntry> entries() const { return {entries_.get(), count_}; }
  std::span<SiteEntry> entries() { return {entries_.get(), count_}; }
  /// The sites of group `g`, by address (none for a group added after the table was built).
  std::span<SiteEntry> group_sites(GroupIndex g);
  std::span<const SiteEntry> group_sites(GroupIndex g) const;

  std::uintptr_t address(const SiteEntry& entry) const { return base_ + entry.offset; }
  std::uintptr_t base() const { return base_; }
  /// One past the last byte of the highest site; base() when there are none.
  std::uintptr_t limit() const { return limit_; }

  /// The site whose bytes contain `address`, or nullptr. Async-signal-safe, lock-free.
  const SiteEntry* find(std::uintptr_t address) const;

  /// Bytes this table keeps in memory, in all, and per site (entries only).
  std::size_t retained_bytes() const;
  static constexpr std::size_t bytes_per_site() { return sizeof(SiteEntry); }

 private:
  struct Run {
    std::uint32_t begin, end;
  };
  std::uintptr_t base_ = 0;
  std::uintptr_t limit_ = 0;
  std::unique_ptr<SiteEntry[]> entries_;
  std::size_t count_ = 0;
  std::vector<Run> runs_;  // indexed by GroupIndex
};

/// The site records this program registered through REPATCH_SITE.
std::span<const abi::SiteRecord> program_site_records();
/// The site records an object registered (repatch_abi_object_loaded).
std::span<const abi::SiteRecord> object_site_records(const abi::ObjectSections& object);

/// The address a record's site field points at.
std::uintptr_t record_site_address(const abi::SiteRecord& record);
/// The descriptor a record's op field points at.
const abi::OpDesc* record_op(const abi::SiteRecord& record);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_SITE_TABLE_H_
