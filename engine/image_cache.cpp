#include "engine/image_cache.h"

#include "engine/site_image.h"

namespace repatch::engine {
namespace {

// site_image(), then the check that the padded image still decodes as one instruction of the
// site's length (a padding prefix the decoder takes for another instruction's is refused).
Result<x86::Image> verified_image(const Catalog& catalog, const SiteTable& table,
                                  const SiteEntry& entry, VariantIndex v, bool alt_pad) {
  Result<x86::Image> image = site_image(catalog, table, entry, v, alt_pad);
  if (!image.ok()) return image.error();
  if (Status s = x86::verify_site_image(image.value().view(), table.address(entry)); !s.ok()) {
    return Error(s.error().code(), describe_site(catalog, table, entry) +
                                       ": its padded image is refused: " + s.error().message());
  }
  return image;
}

std::size_t slot_index(const Catalog& catalog, const SiteTable& table, GroupIndex g,
                       const SiteEntry& entry, VariantIndex v, bool alt_pad) {
  const auto site = static_cast<std::size_t>(&entry - table.group_sites(g).data());
  return (site * catalog.group(g).desc->variant_count + v) * 2 + (alt_pad ? 1 : 0);
}

}  // namespace

void ImageCache::fill(const Catalog& catalog, const SiteTable& table, GroupIndex g) {
  const std::span<const SiteEntry> sites = table.group_sites(g);
  const VariantIndex variants = static_cast<VariantIndex>(catalog.group(g).desc->variant_count);
  std::vector<Slot>& slots = slots_[g];
  slots.resize(sites.size() * variants * 2);
  for (const SiteEntry& entry : sites) {
    for (VariantIndex v = 0; v < variants; ++v) {
      for (const bool alt_pad : {false, true}) {
        Result<x86::Image> image = verified_image(catalog, table, entry, v, alt_pad);
        // A failure is computed again, with its message, if that image is ever asked for.
        if (image.ok())
          slots[slot_index(catalog, table, g, entry, v, alt_pad)] = {image.value(), true};
      }
    }
  }
}

Result<x86::Image> ImageCache::image(const Catalog& catalog, const SiteTable& table,
                                     const SiteEntry& entry, VariantIndex v, bool alt_pad) {
  const GroupIndex g = catalog.op(entry.op).group;
  if (slots_.empty()) slots_.resize(catalog.groups().size());
  if (slots_[g].empty()) fill(catalog, table, g);
  const Slot& slot = slots_[g][slot_index(catalog, table, g, entry, v, alt_pad)];
  if (slot.ok) return slot.image;
  return verified_image(catalog, table, entry, v, alt_pad);
}

}  // namespace repatch::engine
