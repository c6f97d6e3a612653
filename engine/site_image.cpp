#include "engine/site_image.h"

#include <cstring>

#include "base/text.h"
#include "engine/symbolizer.h"

namespace repatch::engine {
namespace {

std::span<const std::uint8_t> site_bytes(const SiteTable& table, const SiteEntry& entry) {
  return {reinterpret_cast<const std::uint8_t*>(table.address(entry)), entry.length};
}

}  // namespace

std::string describe_site(const Catalog& catalog, const SiteTable& table, const SiteEntry& entry) {
  const std::uintptr_t address = table.address(entry);
  std::string out =
      "site " + text::hex(address) + " of op '" + catalog.op(entry.op).desc->name + "'";
  if (std::string symbol = symbolizer().name(address); !symbol.empty()) {
    out += " (in " + symbol + ")";
  }
  return out;
}

Result<x86::Image> site_image(const Catalog& catalog, const SiteTable& table,
                              const SiteEntry& entry, VariantIndex v, bool alt_pad) {
  const CatalogOp& op = catalog.op(entry.op);
  const std::uintptr_t site = table.address(entry);
  Result<x86::Image> image = Error(ErrorCode::kState, "");
  if (v == kIndirect) {
    image = x86::encode_indirect_call(site, reinterpret_cast<std::uintptr_t>(op.desc->slot),
                                      entry.length);
  } else {
    const abi::VariantDesc& variant = *op.variants[v];
    if (variant.kind == abi::VariantKind::kInline) {
      const auto from = reinterpret_cast<std::uintptr_t>(variant.fragment);
      image = x86::relocate_to_site(
          {variant.fragment, static_cast<std::size_t>(variant.fragment_end - variant.fragment)},
          from, site, entry.length);
    } else {
      image =
          x86::encode_call(site, reinterpret_cast<std::uintptr_t>(variant.callable), entry.length);
    }
  }
  if (!image.ok()) {
    return Error(image.error().code(),
                 "variant '" + std::string(catalog.variant_name(op.group, v)) + "' cannot fill " +
                     describe_site(catalog, table, entry) + ": " + image.error().message());
  }
  if (alt_pad) return x86::with_pad_prefix(image.value(), x86::kAltPadPrefix);
  return image;
}

Status check_site_holds_current(const Catalog& catalog, const SiteTable& table,
                                const SiteEntry& entry) {
  const VariantIndex current = entry.variant();
  Result<x86::Image> expected = site_image(catalog, table, entry, current, entry.alt_pad());
  if (!expected.ok()) return expected.error();
  const auto actual = site_bytes(table, entry);
  if (std::memcmp(actual.data(), expected.value().bytes.data(), entry.length) == 0) return {};
  const GroupIndex g = catalog.op(entry.op).group;
  return Error(ErrorCode::kForeignWrite,
               describe_site(catalog, table, entry) + " holds [" + text::hex_bytes(actual) + "] (" +
                   x86::disassemble(actual, table.address(entry)) +
                   "), not the image of its current variant '" +
                   std::string(catalog.variant_name(g, current)) + "' [" +
                   text::hex_bytes(expected.value().view()) +
                   "]: something else wrote there (a debugger breakpoint, another patcher); "
                   "nothing was written");
}

}  // namespace repatch::engine
