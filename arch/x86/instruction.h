// x86-64 instruction images for sites, built and checked with Zydis.
//
// A site holds exactly one instruction that fills it. These functions build such images (a call,
// the default indirect call through an op slot, a copied fragment) and verify images before the
// engine writes them. No length decoding is done by hand: Zydis decodes, encodes and formats.
#ifndef REPATCH_ARCH_X86_INSTRUCTION_H_
#define REPATCH_ARCH_X86_INSTRUCTION_H_

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "repatch/error.h"

namespace repatch::x86 {

/// The architectural limit on the length of one instruction.
inline constexpr std::size_t kMaxInstructionLength = 15;

/// The redundant prefix used to pad an instruction to its site length. CS is ignored as a segment
/// override in 64-bit mode, and it is only a branch hint on Jcc, which sites never hold.
inline constexpr std::uint8_t kPadPrefix = 0x2e;

/// The second padding prefix. A live switch must change every site's first byte, so a site padded
/// with kPadPrefix is switched to an image padded with this one, and back (ES is ignored in 64-bit
/// mode as CS is; DS, 3e, is not used because it is the CET no-track hint on indirect branches).
inline constexpr std::uint8_t kAltPadPrefix = 0x26;

/// The one-byte breakpoint instruction.
inline constexpr std::uint8_t kInt3 = 0xcc;

/// One instruction image, at most 15 bytes.
struct Image {
  std::array<std::uint8_t, kMaxInstructionLength> bytes{};
  std::uint8_t length = 0;

  std::span<const std::uint8_t> view() const { return {bytes.data(), length}; }
  friend bool operator==(const Image& a, const Image& b) {
    return a.length == b.length &&
           std::equal(a.bytes.begin(), a.bytes.begin() + a.length, b.bytes.begin());
  }
};

/// `image` with its leading kPadPrefix bytes (the padding every encoder here adds) replaced by
/// `prefix`. Images are padded only by these encoders, and relocate_to_site refuses fragments that
/// carry a segment override of their own, so every leading kPadPrefix byte is padding.
Image with_pad_prefix(const Image& image, std::uint8_t prefix);

/// Builds an `Image` from raw bytes. Fails (kInvalidArgument) when there are more than 15.
Result<Image> make_image(std::span<const std::uint8_t> bytes);

/// Checks that `bytes`, placed at `address`, decode as exactly one instruction whose length is
/// `bytes.size()` and that the instruction may live at a site: not a branch other than CALL
/// (a site's only exit is its end, or a call that returns there), not INT3/INT n/UD, not a
/// privileged or far-transfer instruction. Fails with kBadImage and a message that names the
/// decoded instruction and the rule it breaks.
Status verify_site_image(std::span<const std::uint8_t> bytes, std::uintptr_t address);

/// Moves the single instruction `fragment`, assembled at address `from`, to a site at `to` that is
/// `site_length` bytes long: RIP-relative displacements and rel32 targets are re-encoded for the
/// new address, then the instruction is padded with `kPadPrefix` to the site length. The result
/// passes `verify_site_image` at `to`.
/// Fails with kUnrelocatable when a target is out of rel32 range from `to`, or when padding is
/// impossible (the fragment already carries a segment override, or the result would exceed 15
/// bytes); with kBadImage when `fragment` is not one instruction or is not allowed at a site; with
/// kInvalidArgument when the fragment is longer than the site.
Result<Image> relocate_to_site(std::span<const std::uint8_t> fragment, std::uintptr_t from,
                               std::uintptr_t to, std::size_t site_length);

/// Checks that the fragment of an inline variant, assembled at `address`, leaves the stack alone:
/// no explicit or implicit use of %rsp (PUSH, POP, an operand based on %rsp) other than a CALL,
/// which returns. The variant's callable form runs the fragment one return address lower than a
/// site does, so a stack-relative operand would mean two different things. Fails with kBadImage
/// naming the instruction, or when the bytes are not one instruction.
Status verify_stack_neutral(std::span<const std::uint8_t> fragment, std::uintptr_t address);

/// The image of `call target` (E8 rel32) for a site at `site` that is `site_length` bytes long,
/// padded with `kPadPrefix`. Fails with kUnrelocatable when `target` is out of rel32 range, with
/// kInvalidArgument when the site is shorter than 5 bytes or longer than 15.
Result<Image> encode_call(std::uintptr_t site, std::uintptr_t target, std::size_t site_length);

/// The image of `call *slot(%rip)` (FF /2 with a RIP-relative operand) for a site at `site`,
/// padded to `site_length`: the instruction a site holds before any patching. Same failures as
/// `encode_call`, with 6 as the shortest site.
Result<Image> encode_indirect_call(std::uintptr_t site, std::uintptr_t slot,
                                   std::size_t site_length);

/// One line of AT&T disassembly of the first instruction in `bytes` at `address`, e.g.
/// "cs cs call 0x5555555551a0". Returns "(bad: <reason>)" when the bytes do not decode.
std::string disassemble(std::span<const std::uint8_t> bytes, std::uintptr_t address);

}  // namespace repatch::x86

#endif  // REPATCH_ARCH_X86_INSTRUCTION_H_
