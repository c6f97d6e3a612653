// The images a switched group's sites can hold, kept from its first switch on.
//
// Planning a switch computes two images per site (the one it holds, the one it will hold) with
// Zydis and decodes the new one to verify it: about a microsecond per site, so over a millisecond
// for a group of 1000 sites, every time the group switches. The images depend only on the site,
// the variant and the padding prefix, so the first switch of a group computes every one its sites
// can take (each variant with either padding) and the later switches read them. The retained
// table (engine/site_table.h) stays at 8 bytes per site, the figure `repatch status` reports; a
// group that has switched keeps two images (16 bytes and a flag each) per site and variant here.
#ifndef REPATCH_ENGINE_IMAGE_CACHE_H_
#define REPATCH_ENGINE_IMAGE_CACHE_H_

#include <cstdint>
#include <vector>

#include "arch/x86/instruction.h"
#include "engine/catalog.h"
#include "engine/site_table.h"

namespace repatch::engine {

class ImageCache {
 public:
  /// The image of variant `v` (not kIndirect) for `entry`, padded as `alt_pad` says, verified to
  /// decode as one instruction of the site's length: from the cache once `entry`'s group has been
  /// planned, else computed (and the whole group with it). Fails as site_image() and
  /// x86::verify_site_image() fail, the message naming the site; failures are not kept. Normal
  /// context, under the engine's switch mutex.
  /// `catalog` and `table` are one object's (engine/code_object.h), the same at every call.
  Result<x86::Image> image(const Catalog& catalog, const SiteTable& table, const SiteEntry& entry,
                           VariantIndex v, bool alt_pad);

 private:
  struct Slot {
    x86::Image image;
    bool ok = false;  // computed and verified
  };
  // Fills group g's slots: every site, every variant, both paddings.
  void fill(const Catalog& catalog, const SiteTable& table, GroupIndex g);

  // Per group (sized at the first call): empty until the group's first plan, then one slot per
  // (site in the group's run of the table, variant, padding), in that order.
  std::vector<std::vector<Slot>> slots_;
};

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_IMAGE_CACHE_H_
