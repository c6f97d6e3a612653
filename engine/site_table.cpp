#include "engine/site_table.h"

#include <algorithm>
#include <memory>

#include "base/text.h"

namespace repatch::engine {
namespace {

Error bad_record(std::string message) {
  return Error(ErrorCode::kBadSiteRecord, std::move(message));
}

struct Resolved {
  std::uintptr_t address;
  OpIndex op;
  GroupIndex group;
  std::uint8_t length;
};

}  // namespace

std::uintptr_t record_site_address(const abi::SiteRecord& record) {
  return reinterpret_cast<std::uintptr_t>(&record.site) + static_cast<std::intptr_t>(record.site);
}

const abi::OpDesc* record_op(const abi::SiteRecord& record) {
  return reinterpret_cast<const abi::OpDesc*>(reinterpret_cast<std::uintptr_t>(&record.op) +
                                              static_cast<std::intptr_t>(record.op));
}

std::span<const abi::SiteRecord> program_site_records() {
  return object_site_records(abi::detail::kThisObject);
}

std::span<const abi::SiteRecord> object_site_records(const abi::ObjectSections& object) {
  const abi::SiteRecord* begin = object.sites_begin;
  const abi::SiteRecord* end = object.sites_end;
  if (begin == nullptr || end <= begin) return {};
  return {begin, static_cast<std::size_t>(end - begin)};
}

SiteTable::SiteTable(SiteTable&&) noexcept = default;
SiteTable& SiteTable::operator=(SiteTable&&) noexcept = default;

Result<SiteTable> SiteTable::build(std::span<const abi::SiteRecord> records,
                                   const Catalog& catalog) {
  std::vector<Resolved> sites;
  sites.reserve(records.size());
  for (const abi::SiteRecord& record : records) {
    Result<OpIndex> op = catalog.find_op(record_op(record));
    if (!op.ok()) {
      return bad_record("site record at " + text::hex(reinterpret_cast<std::uintptr_t>(&record)) +
                        " for the site at " + text::hex(record_site_address(record)) + ": " +
                        op.error().message());
    }
    const CatalogOp& entry = catalog.op(op.value());
    sites.push_back(
        {record_site_address(record), op.value(), entry.group, entry.desc->site_length});
  }

  // First step: by address, to find duplicates and overlaps.
  std::sort(sites.begin(), sites.end(),
            [](const Resolved& a, const Resolved& b) { return a.address < b.address; });
  for (std::size_t i = 1; i < sites.size(); ++i) {
    const Resolved& prev = sites[i - 1];
    const Resolved& cur = sites[i];
    const std::string prev_name = catalog.op(prev.op).desc->name;
    const std::string cur_name = catalog.op(cur.op).desc->name;
    if (cur.address == prev.address) {
      return bad_record("two site records describe the site at " + text::hex(cur.address) +
                        " (ops '" + prev_name + "' and '" + cur_name + "')");
    }
    if (cur.address < prev.address + prev.length) {
      return bad_record("the site of '" + cur_name + "' at " + text::hex(cur.address) +
                        " overlaps the " + std::to_string(prev.length) + "-byte site of '" +
                        prev_name + "' at " + text::hex(prev.address));
    }
  }

  SiteTable table;
  if (!sites.empty()) {
    table.base_ = sites.front().address;
    table.limit_ = sites.back().address + sites.back().length;
    if (table.limit_ - table.base_ > UINT32_MAX) {
      return bad_record("sites span " + text::hex(table.base_) + " to " + text::hex(table.limit_) +
                        ", more than the 4 GiB a 32-bit offset reaches");
    }
  }

  // Second step: by group, then address, so that each group's sites form one run.
  std::stable_sort(sites.begin(), sites.end(),
                   [](const Resolved& a, const Resolved& b) { return a.group < b.group; });
  table.count_ = sites.size();
  table.entries_ = std::make_unique<SiteEntry[]>(sites.size());
  table.runs_.assign(catalog.groups().size(), Run{0, 0});
  for (std::size_t i = 0; i < sites.size(); ++i) {
    SiteEntry& e = table.entries_[i];
    e.offset = static_cast<std::uint32_t>(sites[i].address - table.base_);
    e.op = sites[i].op;
    e.length = sites[i].length;
    e.set_held(kIndirect, false);
  }
  for (std::size_t i = 0, g = 0; g < table.runs_.size(); ++g) {
    table.runs_[g].begin = static_cast<std::uint32_t>(i);
    while (i < sites.size() && sites[i].group == g)
      ++i;
    table.runs_[g].end = static_cast<std::uint32_t>(i);
  }
  return table;
}

std::span<SiteEntry> SiteTable::group_sites(GroupIndex g) {
  // A group added after this table was built (by a later object) has no site here.
  if (g >= runs_.size()) return {};
  return {entries_.get() + runs_[g].begin, runs_[g].end - runs_[g].begin};
}

std::span<const SiteEntry> SiteTable::group_sites(GroupIndex g) const {
  if (g >= runs_.size()) return {};
  return {entries_.get() + runs_[g].begin, runs_[g].end - runs_[g].begin};
}

const SiteEntry* SiteTable::find(std::uintptr_t address) const {
  if (address < base_ || address >= limit_) return nullptr;
  const auto offset = static_cast<std::uint32_t>(address - base_);
  // One binary search per group run; groups are few. Nothing here allocates or locks.
  for (const Run& run : runs_) {
    const SiteEntry* first = entries_.get() + run.begin;
    const SiteEntry* last = entries_.get() + run.end;
    const SiteEntry* it = std::upper_bound(
        first, last, offset, [](std::uint32_t off, const SiteEntry& e) { return off < e.offset; });
    if (it == first) continue;
    --it;
    if (offset < it->offset + it->length) return it;
  }
  return nullptr;
}

std::size_t SiteTable::retained_bytes() const {
  return count_ * sizeof(SiteEntry) + runs_.size() * sizeof(Run) + sizeof(*this);
}

}  // namespace repatch::engine
