// The bytes a site holds for each variant of its op, and how to name a site to a person.
//
// Images are computed when they are needed (at boot, when a switch is planned): the table keeps 8
// bytes per site, not the images; the engine keeps those of groups that have switched
// (engine/image_cache.h).
#ifndef REPATCH_ENGINE_SITE_IMAGE_H_
#define REPATCH_ENGINE_SITE_IMAGE_H_

#include <string>

#include "arch/x86/instruction.h"
#include "engine/catalog.h"
#include "engine/site_table.h"

namespace repatch::engine {

/// The image of variant `v` (kIndirect: the unpatched `call *slot(%rip)`) for the site `entry`,
/// padded with x86::kAltPadPrefix when `alt_pad`, else x86::kPadPrefix. Fails with kBadImage or
/// kUnrelocatable, the message naming the site and the variant.
Result<x86::Image> site_image(const Catalog& catalog, const SiteTable& table,
                              const SiteEntry& entry, VariantIndex v, bool alt_pad = false);

/// "site 0x5612a0 of op 'demo_lock_release' (in worker(Lock*)+0x1c)".
std::string describe_site(const Catalog& catalog, const SiteTable& table, const SiteEntry& entry);

/// Succeeds when the site's bytes are exactly the image of its current variant; otherwise
/// kForeignWrite naming the site, what it holds and what it should hold.
Status check_site_holds_current(const Catalog& catalog, const SiteTable& table,
                                const SiteEntry& entry);

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_SITE_IMAGE_H_
