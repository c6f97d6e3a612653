// Byte-vector tests for site images. Expected bytes are written out by hand (opcode plus a
// little-endian rel32/disp32 computed here), so a test never trusts Zydis to check Zydis.
#include "arch/x86/instruction.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace repatch::x86 {
namespace {

using Bytes = std::vector<std::uint8_t>;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr std::uintptr_t kSite = 0x401000;
constexpr std::uint64_t kMegabyte = 1 << 20;
constexpr std::uint64_t kGigabyte = 1 << 30;

// `count` CS padding prefixes followed by `tail`.
Bytes padded(std::size_t count, const Bytes& tail) {
  Bytes bytes(count, kPadPrefix);
  bytes.insert(bytes.end(), tail.begin(), tail.end());
  return bytes;
}

// `head` followed by the little-endian 32-bit value `target - next_instruction`.
Bytes with_rel32(Bytes head, std::uint64_t target, std::uint64_t next_instruction) {
  const auto rel = static_cast<std::uint32_t>(target - next_instruction);
  for (int shift = 0; shift < 32; shift += 8) {
    head.push_back(static_cast<std::uint8_t>(rel >> shift));
  }
  return head;
}

Bytes bytes_of(const Image& image) {
  return {image.view().begin(), image.view().end()};
}

void expect_refused(const Bytes& bytes, const std::string& names) {
  const Status status = verify_site_image(bytes, kSite);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code(), ErrorCode::kBadImage);
  EXPECT_THAT(status.error().message(), HasSubstr(names));
}

// --- make_image --------------------------------------------------------------------------------

TEST(Instruction, MakeImageKeepsBytes) {
  const Bytes bytes = {0x31, 0xc0};
  Result<Image> image = make_image(bytes);
  ASSERT_TRUE(image.ok());
  EXPECT_EQ(bytes_of(image.value()), bytes);
}

TEST(Instruction, MakeImageRefusesSixteenBytes) {
  Result<Image> image = make_image(Bytes(16, 0x90));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(image.error().message(), HasSubstr("16"));
}

// --- verify_site_image: accepted ---------------------------------------------------------------

TEST(Instruction, VerifyAcceptsPaddedCall) {
  const Status status =
      verify_site_image(padded(3, with_rel32({0xe8}, 0x402000, kSite + 8)), kSite);
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST(Instruction, VerifyAcceptsPaddedStore) {
  const Status status = verify_site_image(padded(5, {0xc6, 0x07, 0x00}), kSite);
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST(Instruction, VerifyAcceptsPaddedXor) {
  const Status status = verify_site_image(padded(6, {0x31, 0xc0}), kSite);
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST(Instruction, VerifyAcceptsPaddedIndirectCallThroughRip) {
  const Status status =
      verify_site_image(padded(2, with_rel32({0xff, 0x15}, 0x404000, kSite + 8)), kSite);
  EXPECT_TRUE(status.ok()) << status.error().message();
}

TEST(Instruction, VerifyAcceptsCallThroughRegister) {
  const Status status = verify_site_image(Bytes{0xff, 0xd0}, kSite);  // call *%rax
  EXPECT_TRUE(status.ok()) << status.error().message();
}

// --- verify_site_image: refused ----------------------------------------------------------------

TEST(Instruction, VerifyRefusesInt3) {
  expect_refused({0xcc}, "int3");
}

TEST(Instruction, VerifyRefusesIntN) {
  expect_refused({0xcd, 0x80}, "int $0x80");
}

TEST(Instruction, VerifyRefusesTwoInstructions) {
  expect_refused({0x31, 0xc0, 0x90}, "'xor %eax, %eax' (2 bytes) followed by 1 more");
}

TEST(Instruction, VerifyRefusesTruncatedInstruction) {
  expect_refused({0xe8, 0x00, 0x00}, "truncated");
}

TEST(Instruction, VerifyRefusesEmptyImage) {
  expect_refused({}, "empty");
}

TEST(Instruction, VerifyRefusesJmp) {
  expect_refused(with_rel32({0xe9}, 0x402000, kSite + 5), "jmp 0x402000");
}

TEST(Instruction, VerifyRefusesJcc) {
  expect_refused(with_rel32({0x0f, 0x84}, 0x402000, kSite + 6), "jz 0x402000");
}

TEST(Instruction, VerifyRefusesRet) {
  expect_refused({0xc3}, "ret");
}

TEST(Instruction, VerifyRefusesLoop) {
  expect_refused({0xe2, 0xfe}, "loop");
}

TEST(Instruction, VerifyRefusesSyscall) {
  expect_refused({0x0f, 0x05}, "syscall");
}

TEST(Instruction, VerifyRefusesFarCall) {
  expect_refused({0xff, 0x1c, 0x25, 0x00, 0x00, 0x00, 0x00}, "lcall");
}

TEST(Instruction, VerifyRefusesCallWithOperandSizePrefix) {
  expect_refused(with_rel32({0x66, 0xe8}, 0x402000, kSite + 6), "operand-size prefix");
}

TEST(Instruction, VerifyRefusesUd2) {
  expect_refused({0x0f, 0x0b}, "ud2");
}

TEST(Instruction, VerifyRefusesHlt) {
  expect_refused({0xf4}, "hlt");
}

TEST(Instruction, VerifyRefusesSwapgs) {
  expect_refused({0x0f, 0x01, 0xf8}, "swapgs");
}

TEST(Instruction, VerifyRefusesCli) {
  expect_refused({0xfa}, "cli");
}

TEST(Instruction, VerifyRefusesSixteenBytes) {
  expect_refused(padded(11, with_rel32({0xe8}, 0x402000, kSite + 16)), "15-byte limit");
}

TEST(Instruction, VerifyMessageNamesRuleAndBytes) {
  const Status status = verify_site_image(Bytes{0xc3}, kSite);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.error().message(), HasSubstr("'ret' [c3] at 0x401000"));
  EXPECT_THAT(status.error().message(), HasSubstr("branch other than CALL"));
}

// --- relocate_to_site --------------------------------------------------------------------------

// mov disp32(%rip), %rax: 48 8b 05 disp32
Bytes load_rip_relative(std::uint64_t target, std::uintptr_t at) {
  return with_rel32({0x48, 0x8b, 0x05}, target, at + 7);
}

TEST(Instruction, RelocateRipRelativeMoveUpKeepsTarget) {
  const std::uintptr_t from = 0x10000000;
  const std::uintptr_t to = from + kMegabyte;
  const std::uint64_t data = from + 0x1234;
  Result<Image> image = relocate_to_site(load_rip_relative(data, from), from, to, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(1, with_rel32({0x48, 0x8b, 0x05}, data, to + 8)));
}

TEST(Instruction, RelocateRipRelativeMoveDownKeepsTarget) {
  const std::uintptr_t from = 0x10000000;
  const std::uintptr_t to = from - kMegabyte;
  const std::uint64_t data = from - 0x40;
  Result<Image> image = relocate_to_site(load_rip_relative(data, from), from, to, 12);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(5, with_rel32({0x48, 0x8b, 0x05}, data, to + 12)));
}

TEST(Instruction, RelocateLeaKeepsTarget) {
  const std::uintptr_t from = 0x20000000;
  const std::uintptr_t to = 0x20100000;
  const std::uint64_t data = 0x20000800;
  const Bytes lea = with_rel32({0x48, 0x8d, 0x3d}, data, from + 7);  // lea disp(%rip), %rdi
  Result<Image> image = relocate_to_site(lea, from, to, 9);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(2, with_rel32({0x48, 0x8d, 0x3d}, data, to + 9)));
}

TEST(Instruction, RelocateCallKeepsTarget) {
  const std::uintptr_t from = 0x7f0000000000;
  const std::uintptr_t to = from + 3 * kMegabyte;
  const std::uint64_t callee = from + 0x500;
  Result<Image> image = relocate_to_site(with_rel32({0xe8}, callee, from + 5), from, to, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(3, with_rel32({0xe8}, callee, to + 8)));
}

TEST(Instruction, RelocatePaddedCallKeepsTarget) {
  const std::uintptr_t from = 0x500000;
  const std::uintptr_t to = 0x600000;
  const std::uint64_t callee = 0x480000;
  const Bytes fragment = padded(1, with_rel32({0xe8}, callee, from + 6));
  Result<Image> image = relocate_to_site(fragment, from, to, 6);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(1, with_rel32({0xe8}, callee, to + 6)));
}

// The displacement is not the last field here: an imm8 follows it, and RIP counts from after it.
TEST(Instruction, RelocateRipRelativeCompareWithImmediate) {
  const std::uintptr_t from = 0x30000000;
  const std::uintptr_t to = 0x30200000;
  const std::uint64_t data = 0x30001000;
  Bytes compare = with_rel32({0x83, 0x3d}, data, from + 7);  // cmpl $5, disp(%rip)
  compare.push_back(0x05);
  Result<Image> image = relocate_to_site(compare, from, to, 10);
  ASSERT_TRUE(image.ok()) << image.error().message();
  Bytes expected = padded(3, with_rel32({0x83, 0x3d}, data, to + 10));
  expected.push_back(0x05);
  EXPECT_EQ(bytes_of(image.value()), expected);
}

TEST(Instruction, RelocateLockedVexAndIndirectCallForms) {
  const std::uintptr_t from = 0x30000000;
  const std::uintptr_t to = 0x2ff00000;
  const std::uint64_t data = 0x30002000;
  const Bytes locked_add = with_rel32({0xf0, 0x48, 0x01, 0x05}, data, from + 8);
  const Bytes vex_load = with_rel32({0xc5, 0xfe, 0x6f, 0x05}, data, from + 8);  // vmovdqu ymm0
  const Bytes slot_call = with_rel32({0xff, 0x15}, data, from + 6);
  for (const Bytes& fragment : {locked_add, vex_load, slot_call}) {
    SCOPED_TRACE(disassemble(fragment, from));
    Result<Image> image = relocate_to_site(fragment, from, to, 11);
    ASSERT_TRUE(image.ok()) << image.error().message();
    const std::size_t pad = 11 - fragment.size();
    Bytes head(fragment.begin(), fragment.end() - 4);
    EXPECT_EQ(bytes_of(image.value()), padded(pad, with_rel32(head, data, to + 11)));
  }
}

TEST(Instruction, RelocateRefusesTargetOutOfRange) {
  const std::uintptr_t from = 0x10000000;
  const std::uintptr_t to = from + 3 * kGigabyte;
  Result<Image> image = relocate_to_site(load_rip_relative(from + 0x100, from), from, to, 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  EXPECT_THAT(image.error().message(), HasSubstr("'mov 0x10000100, %rax' [48 8b 05 f9 00 00 00]"));
  EXPECT_THAT(image.error().message(), HasSubstr("rel32 range"));
}

TEST(Instruction, RelocateAcceptsTargetAtEdgeOfRange) {
  const std::uintptr_t to = 0x90000000;
  const std::uintptr_t from = to + 0x1000;
  const std::uint64_t callee = to + 5 + std::numeric_limits<std::int32_t>::max();
  Result<Image> image = relocate_to_site(with_rel32({0xe8}, callee, from + 5), from, to, 5);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0xe8, 0xff, 0xff, 0xff, 0x7f}));
}

// mov %fs:0x28, %rax
const Bytes kStackGuardLoad = {0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00};

TEST(Instruction, RelocateRefusesSegmentOverrideNeedingPadding) {
  Result<Image> image = relocate_to_site(kStackGuardLoad, 0x1000, 0x2000, 12);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  EXPECT_THAT(image.error().message(), HasSubstr("mov %fs:0x28, %rax"));
  EXPECT_THAT(image.error().message(), HasSubstr("segment override (fs)"));
  EXPECT_THAT(image.error().message(), HasSubstr("exactly 12 bytes"));
}

TEST(Instruction, RelocateAcceptsSegmentOverrideOfSiteSize) {
  Result<Image> image = relocate_to_site(kStackGuardLoad, 0x1000, 0x2000, 9);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), kStackGuardLoad);
}

TEST(Instruction, RelocateRipRelativeOfExactSiteSize) {
  const std::uintptr_t from = 0x10000000;
  const std::uintptr_t to = from + 0x4000;
  const std::uint64_t data = from + 0x9000;
  Result<Image> image = relocate_to_site(load_rip_relative(data, from), from, to, 7);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), load_rip_relative(data, to));
}

TEST(Instruction, RelocateUsesFragmentOfSiteSizeAsIs) {
  const Bytes fragment = padded(6, {0x31, 0xc0});
  Result<Image> image = relocate_to_site(fragment, 0x1000, 0x7000, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), fragment);
}

TEST(Instruction, RelocatePadsPlainFragment) {
  Result<Image> image = relocate_to_site(Bytes{0xc6, 0x07, 0x00}, 0x1000, 0x7000, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(5, {0xc6, 0x07, 0x00}));
}

TEST(Instruction, RelocateRefusesFragmentLongerThanSite) {
  Result<Image> image = relocate_to_site(load_rip_relative(0x1100, 0x1000), 0x1000, 0x2000, 6);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(image.error().message(), HasSubstr("7 bytes, longer than the 6-byte site"));
}

// cs movq $-0x21524111, 0x12345678(%rsp): 13 bytes with its CS prefix.
const Bytes kThirteenByteStore = {0x2e, 0x48, 0xc7, 0x84, 0x24, 0x78, 0x56,
                                  0x34, 0x12, 0xef, 0xbe, 0xad, 0xde};

TEST(Instruction, RelocatePadsThirteenByteInstructionToFifteen) {
  Result<Image> image = relocate_to_site(kThirteenByteStore, 0x1000, 0x2000, 15);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(2, kThirteenByteStore));
}

TEST(Instruction, RelocateRefusesPaddingBeyondFifteenBytes) {
  Result<Image> image = relocate_to_site(kThirteenByteStore, 0x1000, 0x2000, 16);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  EXPECT_THAT(image.error().message(), HasSubstr("cs movq $-0x21524111, 0x12345678(%rsp)"));
  EXPECT_THAT(image.error().message(), HasSubstr("at most 15 bytes"));
}

TEST(Instruction, RelocateRefusesFragmentNotAllowedAtSite) {
  Result<Image> image = relocate_to_site(with_rel32({0xe9}, 0x1800, 0x1005), 0x1000, 0x2000, 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kBadImage);
  EXPECT_THAT(image.error().message(), HasSubstr("fragment 'jmp 0x1800'"));
}

TEST(Instruction, RelocateRefusesTwoInstructionFragment) {
  Result<Image> image = relocate_to_site(Bytes{0x31, 0xc0, 0x90}, 0x1000, 0x2000, 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kBadImage);
  EXPECT_THAT(image.error().message(), HasSubstr("xor %eax, %eax"));
}

// --- encode_call -------------------------------------------------------------------------------

TEST(Instruction, EncodeCallPadsToSite) {
  Result<Image> image = encode_call(kSite, 0x402000, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0x2e, 0x2e, 0x2e, 0xe8, 0xf8, 0x0f, 0x00, 0x00}));
}

TEST(Instruction, EncodeCallOfFiveBytes) {
  Result<Image> image = encode_call(kSite, 0x400000, 5);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0xe8, 0xfb, 0xef, 0xff, 0xff}));
}

TEST(Instruction, EncodeCallOfFifteenBytes) {
  Result<Image> image = encode_call(kSite, 0x402000, 15);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), padded(10, with_rel32({0xe8}, 0x402000, kSite + 15)));
}

TEST(Instruction, EncodeCallRefusesTargetOutOfRange) {
  const std::uint64_t target =
      kSite + 8 + std::uint64_t{std::numeric_limits<std::int32_t>::max()} + 1;
  Result<Image> image = encode_call(kSite, target, 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  EXPECT_THAT(image.error().message(), HasSubstr("0x401000"));
}

TEST(Instruction, EncodeCallAcceptsTargetAtEdgeOfRange) {
  const std::uint64_t target = kSite + 8 + std::numeric_limits<std::int32_t>::max();
  Result<Image> image = encode_call(kSite, target, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0x2e, 0x2e, 0x2e, 0xe8, 0xff, 0xff, 0xff, 0x7f}));
}

TEST(Instruction, EncodeCallRangeEdgeBelow) {
  const std::uintptr_t site = 0x7f0000000000;
  const std::uint64_t lowest = site + 8 - (std::uint64_t{1} << 31);
  Result<Image> reachable = encode_call(site, lowest, 8);
  ASSERT_TRUE(reachable.ok()) << reachable.error().message();
  EXPECT_EQ(bytes_of(reachable.value()), (Bytes{0x2e, 0x2e, 0x2e, 0xe8, 0x00, 0x00, 0x00, 0x80}));
  Result<Image> unreachable = encode_call(site, lowest - 1, 8);
  ASSERT_FALSE(unreachable.ok());
  EXPECT_EQ(unreachable.error().code(), ErrorCode::kUnrelocatable);
}

TEST(Instruction, EncodeCallRefusesSiteShorterThanFive) {
  Result<Image> image = encode_call(kSite, 0x402000, 4);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(image.error().message(), HasSubstr("4 bytes"));
}

TEST(Instruction, EncodeCallRefusesSiteLongerThanFifteen) {
  Result<Image> image = encode_call(kSite, 0x402000, 16);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(image.error().message(), HasSubstr("16 bytes"));
}

// --- encode_indirect_call ----------------------------------------------------------------------

TEST(Instruction, EncodeIndirectCallPadsToSite) {
  Result<Image> image = encode_indirect_call(kSite, 0x404000, 8);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0x2e, 0x2e, 0xff, 0x15, 0xf8, 0x2f, 0x00, 0x00}));
}

TEST(Instruction, EncodeIndirectCallOfSixBytesWithSlotBelow) {
  Result<Image> image = encode_indirect_call(kSite, 0x400ff0, 6);
  ASSERT_TRUE(image.ok()) << image.error().message();
  EXPECT_EQ(bytes_of(image.value()), (Bytes{0xff, 0x15, 0xea, 0xff, 0xff, 0xff}));
}

TEST(Instruction, EncodeIndirectCallRefusesSlotOutOfRange) {
  Result<Image> image = encode_indirect_call(kSite, kSite - 3 * kGigabyte, 8);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kUnrelocatable);
  EXPECT_THAT(image.error().message(), HasSubstr("0x401000"));
}

TEST(Instruction, EncodeIndirectCallRefusesSiteShorterThanSix) {
  Result<Image> image = encode_indirect_call(kSite, 0x404000, 5);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(image.error().message(), HasSubstr("5 bytes"));
}

TEST(Instruction, EncodeIndirectCallRefusesSiteLongerThanFifteen) {
  Result<Image> image = encode_indirect_call(kSite, 0x404000, 16);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.error().code(), ErrorCode::kInvalidArgument);
}

TEST(Instruction, EncodedImagesPassVerification) {
  for (std::size_t length = 6; length <= kMaxInstructionLength; ++length) {
    SCOPED_TRACE(length);
    Result<Image> call = encode_call(kSite, 0x402000, length);
    Result<Image> indirect = encode_indirect_call(kSite, 0x404000, length);
    ASSERT_TRUE(call.ok() && indirect.ok());
    EXPECT_EQ(call.value().length, length);
    EXPECT_EQ(indirect.value().length, length);
    EXPECT_TRUE(verify_site_image(call.value().view(), kSite).ok());
    EXPECT_TRUE(verify_site_image(indirect.value().view(), kSite).ok());
  }
}

// --- disassemble -------------------------------------------------------------------------------

TEST(Instruction, DisassembleShowsCallWithAbsoluteTarget) {
  const std::string text = disassemble(padded(3, with_rel32({0xe8}, 0x402000, kSite + 8)), kSite);
  EXPECT_EQ(text, "cs cs cs call 0x402000");
}

TEST(Instruction, DisassembleShowsRipRelativeSlotAbsolute) {
  const std::string text = disassemble(with_rel32({0xff, 0x15}, 0x404000, kSite + 6), kSite);
  EXPECT_THAT(text, HasSubstr("call"));
  EXPECT_THAT(text, HasSubstr("0x404000"));
}

TEST(Instruction, DisassembleReportsGarbage) {
  EXPECT_THAT(disassemble(Bytes{0x06}, kSite), StartsWith("(bad"));  // push %es: invalid in 64-bit
  EXPECT_THAT(disassemble(Bytes{0xe8, 0x00}, kSite), StartsWith("(bad"));
  EXPECT_THAT(disassemble(Bytes{}, kSite), StartsWith("(bad"));
}

TEST(Instruction, DisassembleReadsOnlyTheFirstInstruction) {
  EXPECT_EQ(disassemble(Bytes{0x31, 0xc0, 0xcc, 0xcc}, kSite), "xor %eax, %eax");
}

TEST(Instruction, DisassembleSurvivesEveryTwoByteInput) {
  for (int first = 0; first < 256; ++first) {
    for (int second = 0; second < 256; ++second) {
      const Bytes bytes = {static_cast<std::uint8_t>(first), static_cast<std::uint8_t>(second)};
      ASSERT_FALSE(disassemble(bytes, kSite).empty());
    }
  }
}

TEST(Instruction, StackNeutralAcceptsOrdinaryFragments) {
  const std::uint8_t movb[] = {0xc6, 0x07, 0x00};                    // movb $0, (%rdi)
  const std::uint8_t call[] = {0xff, 0x15, 0x00, 0x00, 0x00, 0x00};  // call *0(%rip)
  EXPECT_TRUE(verify_stack_neutral(movb, 0x1000).ok());
  EXPECT_TRUE(verify_stack_neutral(call, 0x1000).ok()) << "a call returns: its push is balanced";
}

TEST(Instruction, StackNeutralRefusesStackUse) {
  const std::uint8_t push[] = {0x50};                           // push %rax
  const std::uint8_t load[] = {0x48, 0x8b, 0x44, 0x24, 0x08};   // mov 8(%rsp), %rax
  const std::uint8_t lea[] = {0x48, 0x8d, 0x04, 0x24};          // lea (%rsp), %rax
  const std::uint8_t esp[] = {0x89, 0xe0};                      // mov %esp, %eax
  const std::uint8_t lea32[] = {0x67, 0x8d, 0x44, 0x24, 0x08};  // lea 8(%esp), %eax
  const std::uint8_t call[] = {0xff, 0x54, 0x24, 0x08};         // call *8(%rsp)
  for (std::span<const std::uint8_t> bytes :
       {std::span<const std::uint8_t>(push), std::span<const std::uint8_t>(load),
        std::span<const std::uint8_t>(lea), std::span<const std::uint8_t>(esp),
        std::span<const std::uint8_t>(lea32), std::span<const std::uint8_t>(call)}) {
    Status s = verify_stack_neutral(bytes, 0x1000);
    ASSERT_FALSE(s.ok()) << disassemble(bytes, 0x1000);
    EXPECT_EQ(s.error().code(), ErrorCode::kBadImage);
    EXPECT_NE(s.error().message().find("stack pointer"), std::string::npos);
  }
}

}  // namespace
}  // namespace repatch::x86
