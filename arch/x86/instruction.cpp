// x86-64 site images, built and checked with Zydis.
//
// Every image is checked by decoding it; nothing here computes an instruction length by hand.
// Relocation re-encodes a fragment with absolute targets and then proves, by decoding the result
// at its new address, that it still means the same thing.
#include "arch/x86/instruction.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string_view>

#include "base/return_if_error.h"
#include "base/text.h"

namespace repatch::x86 {
namespace {

// Shortest encodings of the two calls a site holds before and after patching.
constexpr std::size_t kCallRel32Length = 5;        // E8 rel32
constexpr std::size_t kIndirectCallRipLength = 6;  // FF 15 disp32

// Bytes shown in a message before it is cut short; enough for one instruction.
constexpr std::size_t kMaxBytesInMessage = kMaxInstructionLength + 1;

// ---------------------------------------------------------------------------------------------
// Zydis objects and text helpers
// ---------------------------------------------------------------------------------------------

// Initialisation only fails on invalid arguments, which are constants here, so its status is not
// worth carrying to every caller.
const ZydisDecoder& decoder() {
  static const ZydisDecoder instance = [] {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    return d;
  }();
  return instance;
}

const ZydisFormatter& formatter() {
  static const ZydisFormatter instance = [] {
    ZydisFormatter f;
    ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_ATT);
    // Padding prefixes are what distinguish two images of the same call, so people must see them.
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_DETAILED_PREFIXES, ZYAN_TRUE);
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_ADDR_PADDING_ABSOLUTE,
                              ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_HEX_UPPERCASE, ZYAN_FALSE);
    return f;
  }();
  return instance;
}

struct Decoded {
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];

  std::span<const ZydisDecodedOperand> visible_operands() const {
    return {operands, instruction.operand_count_visible};
  }
};

ZyanStatus decode_first(std::span<const std::uint8_t> bytes, Decoded& out) {
  return ZydisDecoderDecodeFull(&decoder(), bytes.data(), bytes.size(), &out.instruction,
                                out.operands);
}

const char* decode_failure_reason(ZyanStatus status) {
  switch (status) {
    case ZYDIS_STATUS_NO_MORE_DATA:
      return "truncated: the bytes end inside the instruction";
    case ZYDIS_STATUS_INSTRUCTION_TOO_LONG:
      return "longer than 15 bytes";
    case ZYDIS_STATUS_ILLEGAL_LOCK:
      return "LOCK prefix on an instruction that does not accept it";
    case ZYDIS_STATUS_ILLEGAL_LEGACY_PFX:
      return "legacy prefix not allowed before VEX/EVEX/XOP";
    case ZYDIS_STATUS_ILLEGAL_REX:
      return "REX prefix not allowed before VEX/EVEX/XOP";
    default:
      return "not a valid instruction";
  }
}

std::string format_instruction(const Decoded& decoded, std::uintptr_t address) {
  char text[256];
  const ZyanStatus status = ZydisFormatterFormatInstruction(
      &formatter(), &decoded.instruction, decoded.operands,
      decoded.instruction.operand_count_visible, text, sizeof text, address, nullptr);
  if (!ZYAN_SUCCESS(status)) {
    return "(bad: cannot be formatted)";
  }
  return text;
}

using text::hex;

std::string hex_bytes(std::span<const std::uint8_t> bytes) {
  return text::hex_bytes(bytes, kMaxBytesInMessage);
}

// "'call 0x1008' [2e 2e 2e e8 03 00 00 00]": what a person needs to recognise an image.
std::string describe(const Decoded& decoded, std::span<const std::uint8_t> bytes,
                     std::uintptr_t address) {
  return "'" + format_instruction(decoded, address) + "' [" + hex_bytes(bytes) + "]";
}

// ---------------------------------------------------------------------------------------------
// What a site may hold
// ---------------------------------------------------------------------------------------------

bool is_mnemonic_one_of(const ZydisDecodedInstruction& insn,
                        std::initializer_list<ZydisMnemonic> mnemonics) {
  return std::find(mnemonics.begin(), mnemonics.end(), insn.mnemonic) != mnemonics.end();
}

std::size_t count_raw_prefixes(const ZydisDecodedInstruction& insn, std::uint8_t value) {
  std::size_t count = 0;
  for (std::uint8_t i = 0; i < insn.raw.prefix_count; ++i) {
    count += insn.raw.prefixes[i].value == value ? 1 : 0;
  }
  return count;
}

bool has_raw_prefix(const ZydisDecodedInstruction& insn, std::uint8_t value) {
  return count_raw_prefixes(insn, value) != 0;
}

const char* call_rule_broken(const ZydisDecodedInstruction& insn) {
  if (insn.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) {
    return "is a far call, which switches code segment; only near calls may live at a site";
  }
  // Zydis decodes like Intel, which ignores 0x66 on near calls; AMD honours it and would read a
  // rel16 and truncate RIP, so the two vendors would not even agree on where the site ends.
  if (has_raw_prefix(insn, 0x66)) {
    return "is a call with an operand-size prefix, which AMD CPUs run as a 16-bit call that "
           "truncates RIP; drop the 0x66 prefix";
  }
  return nullptr;
}

// Returns why `insn` may not live at a site, or nullptr when it may. A site's only exit must be its
// end, or a call that returns there; and it must not fault in a user-space process.
const char* site_rule_broken(const ZydisDecodedInstruction& insn) {
  const ZydisInstructionCategory category = insn.meta.category;
  if (insn.mnemonic == ZYDIS_MNEMONIC_CALL) {
    return call_rule_broken(insn);
  }
  if (category == ZYDIS_CATEGORY_COND_BR || category == ZYDIS_CATEGORY_UNCOND_BR ||
      category == ZYDIS_CATEGORY_RET || insn.meta.branch_type != ZYDIS_BRANCH_TYPE_NONE) {
    return "is a branch other than CALL; a site may only be left through its end or through a "
           "call that returns there";
  }
  if (category == ZYDIS_CATEGORY_SYSCALL || category == ZYDIS_CATEGORY_SYSRET) {
    return "enters or leaves the kernel (SYSCALL/SYSENTER/SYSRET family); a site may only be "
           "left through its end or through a call that returns there";
  }
  if (category == ZYDIS_CATEGORY_INTERRUPT) {
    return "raises a software interrupt (INT3/INT1/INT n); INT3 is reserved for the patching "
           "protocol and a site must not trap";
  }
  if (is_mnemonic_one_of(insn, {ZYDIS_MNEMONIC_UD0, ZYDIS_MNEMONIC_UD1, ZYDIS_MNEMONIC_UD2})) {
    return "raises #UD on purpose; a site must not trap";
  }
  if (insn.mnemonic == ZYDIS_MNEMONIC_HLT) {
    return "halts the CPU, which only ring 0 may do";
  }
  if ((insn.attributes & ZYDIS_ATTRIB_IS_PRIVILEGED) != 0) {
    return "is privileged (ring 0 only) and would fault in this process";
  }
  // Not marked privileged by Zydis because they depend on IOPL, which is 0 for user space.
  if (is_mnemonic_one_of(insn, {ZYDIS_MNEMONIC_CLI, ZYDIS_MNEMONIC_STI}) ||
      category == ZYDIS_CATEGORY_IO || category == ZYDIS_CATEGORY_IOSTRINGOP) {
    return "needs I/O privilege (IOPL) and would fault in this process";
  }
  return nullptr;
}

// Decodes `bytes` at `address` as the single instruction of a site. `role` names the bytes in
// messages ("site image", "fragment").
Result<Decoded> decode_site_instruction(std::span<const std::uint8_t> bytes, std::uintptr_t address,
                                        std::string_view role) {
  const std::string where = " at " + hex(address);
  if (bytes.empty()) {
    return Error(ErrorCode::kBadImage,
                 std::string(role) + where + " is empty; a site holds exactly one instruction");
  }
  if (bytes.size() > kMaxInstructionLength) {
    return Error(ErrorCode::kBadImage,
                 std::string(role) + " [" + hex_bytes(bytes) + "]" + where + " is " +
                     std::to_string(bytes.size()) +
                     " bytes, more than the 15-byte limit of one x86 instruction");
  }
  Decoded decoded;
  const ZyanStatus status = decode_first(bytes, decoded);
  if (!ZYAN_SUCCESS(status)) {
    return Error(ErrorCode::kBadImage, std::string(role) + " [" + hex_bytes(bytes) + "]" + where +
                                           " does not decode: " + decode_failure_reason(status));
  }
  if (decoded.instruction.length != bytes.size()) {
    const std::size_t length = decoded.instruction.length;
    return Error(ErrorCode::kBadImage,
                 std::string(role) + " [" + hex_bytes(bytes) + "]" + where + " decodes as '" +
                     format_instruction(decoded, address) + "' (" + std::to_string(length) +
                     " bytes) followed by " + std::to_string(bytes.size() - length) +
                     " more; a site must hold exactly one instruction that fills it");
  }
  if (const char* rule = site_rule_broken(decoded.instruction); rule != nullptr) {
    return Error(ErrorCode::kBadImage,
                 std::string(role) + " " + describe(decoded, bytes, address) + where + " " + rule);
  }
  return decoded;
}

// ---------------------------------------------------------------------------------------------
// Building padded images
// ---------------------------------------------------------------------------------------------

// The caller guarantees instruction.size() <= site_length <= kMaxInstructionLength.
Image padded_image(std::span<const std::uint8_t> instruction, std::size_t site_length) {
  Image image;
  const std::size_t pad = site_length - instruction.size();
  std::fill_n(image.bytes.begin(), pad, kPadPrefix);
  std::copy(instruction.begin(), instruction.end(), image.bytes.begin() + pad);
  image.length = static_cast<std::uint8_t>(site_length);
  return image;
}

bool within_rel32(std::uint64_t target, std::uint64_t next_instruction) {
  const auto distance = static_cast<std::int64_t>(target - next_instruction);
  return distance >= std::numeric_limits<std::int32_t>::min() &&
         distance <= std::numeric_limits<std::int32_t>::max();
}

Status check_site_length(std::size_t site_length, std::size_t shortest, std::uintptr_t site,
                         std::string_view instruction) {
  if (site_length < shortest || site_length > kMaxInstructionLength) {
    return Error(ErrorCode::kInvalidArgument,
                 "site at " + hex(site) + " is " + std::to_string(site_length) + " bytes; '" +
                     std::string(instruction) + "' fits only sites of " + std::to_string(shortest) +
                     " to 15 bytes");
  }
  return {};
}

struct Encoded {
  Image image;
  std::size_t pad = 0;
};

// Encodes `request` (absolute targets) so that, after padding, it fills the site exactly. The
// instruction proper starts after the padding, and the padding depends on the encoded length, so
// encode until the two agree. Starting from the expected length matters: a wrong first guess
// moves the instruction's end, and a target at the edge of rel32 range would fall out of it.
Result<Encoded> encode_padded(const ZydisEncoderRequest& request, std::uintptr_t site,
                              std::size_t site_length, std::size_t expected_length,
                              std::string_view what) {
  constexpr int kMaxRounds = 4;
  std::size_t pad = site_length - std::min(expected_length, site_length);
  for (int round = 0; round < kMaxRounds; ++round) {
    ZydisEncoderRequest attempt = request;  // the encoder writes relative values back into it
    std::uint8_t buffer[ZYDIS_MAX_INSTRUCTION_LENGTH];
    ZyanUSize length = sizeof buffer;
    const ZyanStatus status =
        ZydisEncoderEncodeInstructionAbsolute(&attempt, buffer, &length, site + pad);
    if (!ZYAN_SUCCESS(status)) {
      return Error(ErrorCode::kUnrelocatable, "Zydis cannot encode " + std::string(what) + " at " +
                                                  hex(site + pad) + " (status " + hex(status) +
                                                  ")");
    }
    if (length > site_length) {
      return Error(ErrorCode::kUnrelocatable,
                   std::string(what) + " encodes to " + std::to_string(length) + " bytes at " +
                       hex(site) + ", more than the " + std::to_string(site_length) + "-byte site");
    }
    if (site_length - length == pad) {
      return Encoded{padded_image({buffer, length}, site_length), pad};
    }
    pad = site_length - length;
  }
  return Error(ErrorCode::kUnrelocatable, "the encoded length of " + std::string(what) + " at " +
                                              hex(site) + " does not settle");
}

// ---------------------------------------------------------------------------------------------
// Relocation
// ---------------------------------------------------------------------------------------------

bool is_relative(const ZydisDecodedOperand& operand) {
  if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY) {
    return operand.mem.base == ZYDIS_REGISTER_RIP || operand.mem.base == ZYDIS_REGISTER_EIP;
  }
  return operand.type == ZYDIS_OPERAND_TYPE_IMMEDIATE && operand.imm.is_relative;
}

bool has_relative_operand(const Decoded& decoded) {
  const auto operands = decoded.visible_operands();
  return std::any_of(operands.begin(), operands.end(), is_relative);
}

std::optional<std::uint64_t> absolute_target(const Decoded& decoded,
                                             const ZydisDecodedOperand& operand,
                                             std::uintptr_t address) {
  ZyanU64 target = 0;
  if (!ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&decoded.instruction, &operand, address, &target))) {
    return std::nullopt;
  }
  return target;
}

// CS/DS/ES/SS overrides are ignored in 64-bit mode; only FS and GS change the address.
ZydisRegister effective_segment(ZydisRegister segment) {
  return segment == ZYDIS_REGISTER_FS || segment == ZYDIS_REGISTER_GS ? segment
                                                                      : ZYDIS_REGISTER_NONE;
}

// Returns the name of a segment-override prefix other than CS, or nullptr. Mixing two prefixes of
// the same group is undefined, so such an instruction cannot take CS padding.
const char* foreign_segment_prefix(const ZydisDecodedInstruction& insn) {
  static constexpr struct {
    std::uint8_t value;
    const char* name;
  } kOverrides[] = {{0x26, "es"}, {0x36, "ss"}, {0x3e, "ds"}, {0x64, "fs"}, {0x65, "gs"}};
  for (const auto& override_prefix : kOverrides) {
    if (has_raw_prefix(insn, override_prefix.value)) {
      return override_prefix.name;
    }
  }
  return nullptr;
}

Status check_paddable(const Decoded& fragment, std::span<const std::uint8_t> bytes,
                      std::uintptr_t from, std::size_t pad, std::size_t site_length) {
  const char* segment = foreign_segment_prefix(fragment.instruction);
  if (pad == 0 || segment == nullptr) {
    return {};
  }
  return Error(ErrorCode::kUnrelocatable,
               "fragment " + describe(fragment, bytes, from) + " carries a segment override (" +
                   segment + ") and cannot be padded with CS prefixes; assemble it to exactly " +
                   std::to_string(site_length) + " bytes instead");
}

Status check_targets_reachable(const Decoded& fragment, std::span<const std::uint8_t> bytes,
                               std::uintptr_t from, std::uintptr_t to, std::size_t site_length) {
  const std::uint64_t site_end = to + site_length;
  for (const ZydisDecodedOperand& operand : fragment.visible_operands()) {
    if (!is_relative(operand)) {
      continue;
    }
    const std::optional<std::uint64_t> target = absolute_target(fragment, operand, from);
    if (!target) {
      return Error(ErrorCode::kUnrelocatable,
                   "cannot compute the target of fragment " + describe(fragment, bytes, from));
    }
    if (!within_rel32(*target, site_end)) {
      return Error(ErrorCode::kUnrelocatable,
                   "fragment " + describe(fragment, bytes, from) + " refers to " + hex(*target) +
                       ", out of rel32 range (+/-2 GiB) from the site at " + hex(to) +
                       "; load the address into a register or place the target nearer");
    }
  }
  return {};
}

// The fragment's own request, with every relative operand replaced by its absolute target so
// the encoder can recompute it for the new address.
Result<ZydisEncoderRequest> absolute_request(const Decoded& fragment, std::uintptr_t from) {
  ZydisEncoderRequest request;
  if (!ZYAN_SUCCESS(ZydisEncoderDecodedInstructionToEncoderRequest(
          &fragment.instruction, fragment.operands, fragment.instruction.operand_count_visible,
          &request))) {
    return Error(ErrorCode::kUnrelocatable,
                 "Zydis cannot re-encode '" + format_instruction(fragment, from) + "'");
  }
  // CS is meaningless in 64-bit mode; any the fragment had come back as padding.
  request.prefixes &= ~ZYDIS_ATTRIB_HAS_SEGMENT_CS;
  for (std::size_t i = 0; i < request.operand_count; ++i) {
    const ZydisDecodedOperand& operand = fragment.operands[i];
    if (!is_relative(operand)) {
      continue;
    }
    const std::uint64_t target = absolute_target(fragment, operand, from).value_or(0);
    if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      request.operands[i].mem.displacement = static_cast<ZyanI64>(target);
    } else {
      request.operands[i].imm.u = target;
    }
  }
  return request;
}

Result<Image> reencode_at_site(const Decoded& fragment, std::span<const std::uint8_t> bytes,
                               std::uintptr_t from, std::uintptr_t to, std::size_t site_length) {
  REPATCH_RETURN_IF_ERROR(check_targets_reachable(fragment, bytes, from, to, site_length));
  Result<ZydisEncoderRequest> request = absolute_request(fragment, from);
  if (!request.ok()) {
    return request.error();
  }
  const std::string what = "fragment '" + format_instruction(fragment, from) + "'";
  const std::size_t expected_length =
      fragment.instruction.length - count_raw_prefixes(fragment.instruction, kPadPrefix);
  Result<Encoded> encoded = encode_padded(request.value(), to, site_length, expected_length, what);
  if (!encoded.ok()) {
    return encoded.error();
  }
  REPATCH_RETURN_IF_ERROR(check_paddable(fragment, bytes, from, encoded.value().pad, site_length));
  return encoded.value().image;
}

Result<Image> pad_unchanged(const Decoded& fragment, std::span<const std::uint8_t> bytes,
                            std::uintptr_t from, std::size_t site_length) {
  if (Status paddable =
          check_paddable(fragment, bytes, from, site_length - bytes.size(), site_length);
      !paddable.ok()) {
    return paddable.error();
  }
  return padded_image(bytes, site_length);
}

bool same_operand(const Decoded& a, const ZydisDecodedOperand& x, std::uintptr_t a_address,
                  const Decoded& b, const ZydisDecodedOperand& y, std::uintptr_t b_address) {
  if (x.type != y.type || x.size != y.size) {
    return false;
  }
  if (is_relative(x) || is_relative(y)) {
    return is_relative(x) && is_relative(y) &&
           absolute_target(a, x, a_address) == absolute_target(b, y, b_address);
  }
  switch (x.type) {
    case ZYDIS_OPERAND_TYPE_REGISTER:
      return x.reg.value == y.reg.value;
    case ZYDIS_OPERAND_TYPE_MEMORY:
      return x.mem.type == y.mem.type && x.mem.base == y.mem.base && x.mem.index == y.mem.index &&
             x.mem.scale == y.mem.scale && x.mem.disp.value == y.mem.disp.value &&
             effective_segment(x.mem.segment) == effective_segment(y.mem.segment);
    case ZYDIS_OPERAND_TYPE_POINTER:
      return x.ptr.segment == y.ptr.segment && x.ptr.offset == y.ptr.offset;
    case ZYDIS_OPERAND_TYPE_IMMEDIATE:
      return x.imm.value.u == y.imm.value.u;
    default:
      return true;
  }
}

bool same_meaning(const Decoded& a, std::uintptr_t a_address, const Decoded& b,
                  std::uintptr_t b_address) {
  if (a.instruction.mnemonic != b.instruction.mnemonic ||
      a.instruction.operand_count_visible != b.instruction.operand_count_visible) {
    return false;
  }
  for (std::size_t i = 0; i < a.instruction.operand_count_visible; ++i) {
    if (!same_operand(a, a.operands[i], a_address, b, b.operands[i], b_address)) {
      return false;
    }
  }
  return true;
}

// The post-condition of relocation: the image is a valid site instruction at `to` and does what
// the fragment did at `from`. A mismatch means Zydis chose an encoding we did not expect.
Status check_relocated(const Decoded& fragment, std::uintptr_t from, const Image& moved,
                       std::uintptr_t to) {
  Result<Decoded> result = decode_site_instruction(moved.view(), to, "relocated image");
  if (!result.ok()) {
    return Error(ErrorCode::kUnrelocatable, result.error().message());
  }
  if (!same_meaning(fragment, from, result.value(), to)) {
    return Error(ErrorCode::kUnrelocatable,
                 "relocating '" + format_instruction(fragment, from) + "' from " + hex(from) +
                     " to " + hex(to) + " produced " + describe(result.value(), moved.view(), to) +
                     ", which does not do the same thing");
  }
  return {};
}

// A near CALL with one operand still to fill in: what both call images start from.
ZydisEncoderRequest near_call_request() {
  ZydisEncoderRequest request{};
  request.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
  request.mnemonic = ZYDIS_MNEMONIC_CALL;
  request.branch_type = ZYDIS_BRANCH_TYPE_NEAR;
  request.operand_count = 1;
  return request;
}

}  // namespace

Image with_pad_prefix(const Image& image, std::uint8_t prefix) {
  Image out = image;
  for (std::uint8_t i = 0; i < out.length && out.bytes[i] == kPadPrefix; ++i)
    out.bytes[i] = prefix;
  return out;
}

Result<Image> make_image(std::span<const std::uint8_t> bytes) {
  if (bytes.size() > kMaxInstructionLength) {
    return Error(ErrorCode::kInvalidArgument, "an instruction image holds at most 15 bytes; got " +
                                                  std::to_string(bytes.size()) + " [" +
                                                  hex_bytes(bytes) + "]");
  }
  Image image;
  std::copy(bytes.begin(), bytes.end(), image.bytes.begin());
  image.length = static_cast<std::uint8_t>(bytes.size());
  return image;
}

Status verify_site_image(std::span<const std::uint8_t> bytes, std::uintptr_t address) {
  return decode_site_instruction(bytes, address, "site image").status();
}

Status verify_stack_neutral(std::span<const std::uint8_t> fragment, std::uintptr_t address) {
  Result<Decoded> decoded = decode_site_instruction(fragment, address, "fragment");
  if (!decoded.ok()) return decoded.error();
  const Decoded& d = decoded.value();
  // A CALL's own push and its RET's pop balance, so only its explicit operands count (`call
  // *8(%rsp)` reads the stack); for anything else every operand does, hidden ones included (PUSH).
  const std::size_t count = d.instruction.mnemonic == ZYDIS_MNEMONIC_CALL
                                ? d.instruction.operand_count_visible
                                : d.instruction.operand_count;
  auto is_rsp = [](ZydisRegister reg) {
    return reg != ZYDIS_REGISTER_NONE &&
           ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, reg) == ZYDIS_REGISTER_RSP;
  };
  for (std::size_t i = 0; i < count; ++i) {
    const ZydisDecodedOperand& op = d.operands[i];
    const bool uses_rsp =
        (op.type == ZYDIS_OPERAND_TYPE_REGISTER && is_rsp(op.reg.value)) ||
        (op.type == ZYDIS_OPERAND_TYPE_MEMORY && (is_rsp(op.mem.base) || is_rsp(op.mem.index)));
    if (uses_rsp) {
      return Error(ErrorCode::kBadImage,
                   "fragment " + describe(d, fragment, address) +
                       " uses the stack pointer; an inline variant also runs as a function "
                       "(fragment; ret) one return address lower, so it must leave %rsp and "
                       "the stack alone");
    }
  }
  return {};
}

Result<Image> relocate_to_site(std::span<const std::uint8_t> fragment, std::uintptr_t from,
                               std::uintptr_t to, std::size_t site_length) {
  if (fragment.size() > site_length) {
    return Error(ErrorCode::kInvalidArgument,
                 "fragment [" + hex_bytes(fragment) + "] is " + std::to_string(fragment.size()) +
                     " bytes, longer than the " + std::to_string(site_length) + "-byte site at " +
                     hex(to));
  }
  Result<Decoded> decoded = decode_site_instruction(fragment, from, "fragment");
  if (!decoded.ok()) {
    return decoded.error();
  }
  const Decoded& original = decoded.value();
  if (site_length > kMaxInstructionLength) {
    return Error(ErrorCode::kUnrelocatable,
                 "fragment " + describe(original, fragment, from) + " cannot be padded to the " +
                     std::to_string(site_length) + "-byte site at " + hex(to) +
                     ": one instruction is at most 15 bytes; split the site");
  }
  // Relative operands count from the instruction's end, so the bytes only need re-encoding when
  // that end moves.
  const bool end_moves = from + fragment.size() != to + site_length;
  Result<Image> moved = has_relative_operand(original) && end_moves
                            ? reencode_at_site(original, fragment, from, to, site_length)
                            : pad_unchanged(original, fragment, from, site_length);
  if (!moved.ok()) {
    return moved;
  }
  REPATCH_RETURN_IF_ERROR(check_relocated(original, from, moved.value(), to));
  return moved;
}

Result<Image> encode_call(std::uintptr_t site, std::uintptr_t target, std::size_t site_length) {
  REPATCH_RETURN_IF_ERROR(check_site_length(site_length, kCallRel32Length, site, "call rel32"));
  if (!within_rel32(target, site + site_length)) {
    return Error(ErrorCode::kUnrelocatable,
                 "call target " + hex(target) +
                     " is out of rel32 range (+/-2 GiB) from the site at " + hex(site) +
                     "; call it through a slot (encode_indirect_call) instead");
  }
  ZydisEncoderRequest request = near_call_request();
  request.branch_width = ZYDIS_BRANCH_WIDTH_32;
  request.operands[0].type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
  request.operands[0].imm.u = target;
  Result<Encoded> encoded =
      encode_padded(request, site, site_length, kCallRel32Length, "'call " + hex(target) + "'");
  if (!encoded.ok()) {
    return encoded.error();
  }
  return encoded.value().image;
}

Result<Image> encode_indirect_call(std::uintptr_t site, std::uintptr_t slot,
                                   std::size_t site_length) {
  if (Status length =
          check_site_length(site_length, kIndirectCallRipLength, site, "call *slot(%rip)");
      !length.ok()) {
    return length.error();
  }
  if (!within_rel32(slot, site + site_length)) {
    return Error(ErrorCode::kUnrelocatable,
                 "op slot " + hex(slot) + " is out of rel32 range (+/-2 GiB) from the site at " +
                     hex(site) + "; keep the ops table in the same image as its sites");
  }
  ZydisEncoderRequest request = near_call_request();
  request.operands[0].type = ZYDIS_OPERAND_TYPE_MEMORY;
  request.operands[0].mem.base = ZYDIS_REGISTER_RIP;
  request.operands[0].mem.displacement = static_cast<ZyanI64>(slot);
  request.operands[0].mem.size = sizeof(std::uint64_t);
  Result<Encoded> encoded = encode_padded(request, site, site_length, kIndirectCallRipLength,
                                          "'call *" + hex(slot) + "'");
  if (!encoded.ok()) {
    return encoded.error();
  }
  return encoded.value().image;
}

std::string disassemble(std::span<const std::uint8_t> bytes, std::uintptr_t address) {
  if (bytes.empty()) {
    return "(bad: no bytes)";
  }
  Decoded decoded;
  const ZyanStatus status = decode_first(bytes, decoded);
  if (!ZYAN_SUCCESS(status)) {
    return std::string("(bad: ") + decode_failure_reason(status) + ")";
  }
  return format_instruction(decoded, address);
}

}  // namespace repatch::x86
