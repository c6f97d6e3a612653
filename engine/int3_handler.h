// The #BP (SIGTRAP) handler: forward progress for executors that reach a fenced site (H4, H5).
//
// A thread that runs a site while a switch has INT3 on its first byte traps here. If the site
// belongs to the published attempt, the handler finishes the attempt's writes itself, in whatever
// direction it goes, and resumes the thread at the site's first byte, which then holds a whole
// instruction: the new one, or the old one if the attempt was taken back. It never emulates the
// old instruction and never waits for another CPU. A trap at a site whose INT3 is already gone
// (another executor finished meanwhile) just resumes at the site start.
//
// Any other SIGTRAP (a debugger's breakpoint, raise(SIGTRAP), an int3 elsewhere) goes to the
// handler that was installed before boot, or gets the default action. A handler installed after
// boot replaces this one; switches then refuse (docs/signals.md). A debugger attached to the
// process sees every SIGTRAP first, the engine's included: in gdb, `signal SIGTRAP` hands a
// fence's trap to this handler (README says why `handle SIGTRAP pass` does not do).
#ifndef REPATCH_ENGINE_INT3_HANDLER_H_
#define REPATCH_ENGINE_INT3_HANDLER_H_

#include "repatch/error.h"

namespace repatch::engine {

/// Installs the handler once, remembering the previous disposition; later calls check that
/// SIGTRAP still runs it. Normal context. The handler finds sites in the objects published by
/// engine/object_list.h. Fails with kSystem when sigaction refuses, kState when
/// something replaced the handler since it was installed (nothing chains back to it then).
Status install_int3_handler();

}  // namespace repatch::engine

#endif  // REPATCH_ENGINE_INT3_HANDLER_H_
