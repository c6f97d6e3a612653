#include "arch/x86/proc_maps.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using repatch::x86::parse_proc_maps;

constexpr const char* kSample =
    "55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234                       /usr/bin/foo\n"
    "55d0c0a21000-55d0c0a40000 r-xp 00021000 fd:01 1234                       /usr/bin/foo\n"
    "7f0000000000-7f0000001000 r-xs 00000000 00:01 5678                       "
    "/memfd:repatch-text (deleted)\n"
    "7f0000002000-7f0000003000 rw-s 00000000 00:01 5678                       "
    "/memfd:repatch-text (deleted)\n"
    "7f0000004000-7f0000006000 ---p 00000000 00:00 0 \n"
    "7f0000006000-7f0000007000 rw-p 00000000 00:00 0\n"
    "7f0000008000-7f0000009000 r--p 00001000 103:05 42                         /tmp/a dir/b  c\n"
    "7ffd12340000-7ffd12361000 rw-p 00000000 00:00 0                          [stack]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(ProcMaps, ParsesEveryKindOfLine) {
  auto r = parse_proc_maps(kSample);
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const auto& m = r.value();
  ASSERT_EQ(m.size(), 9u);

  EXPECT_EQ(m[1].begin, 0x55d0c0a21000u);
  EXPECT_EQ(m[1].end, 0x55d0c0a40000u);
  EXPECT_TRUE(m[1].r && !m[1].w && m[1].x && !m[1].shared);
  EXPECT_EQ(m[1].offset, 0x21000u);
  EXPECT_EQ(m[1].inode, 1234u);
  EXPECT_EQ(m[1].path, "/usr/bin/foo");

  EXPECT_TRUE(m[2].r && !m[2].w && m[2].x && m[2].shared);
  EXPECT_EQ(m[2].path, "/memfd:repatch-text (deleted)");
  EXPECT_TRUE(m[3].r && m[3].w && !m[3].x && m[3].shared);

  EXPECT_FALSE(m[4].r || m[4].w || m[4].x || m[4].shared);
  EXPECT_EQ(m[4].path, "");  // anonymous, with a trailing blank
  EXPECT_EQ(m[5].path, "");  // anonymous, without one
  EXPECT_EQ(m[5].inode, 0u);

  EXPECT_EQ(m[6].path, "/tmp/a dir/b  c");  // spaces inside a path are kept
  EXPECT_EQ(m[6].offset, 0x1000u);
  EXPECT_EQ(m[7].path, "[stack]");
  EXPECT_EQ(m[8].begin, 0xffffffffff600000u);
  EXPECT_TRUE(!m[8].r && m[8].x);
}

TEST(ProcMaps, EmptyTextAndBlankLines) {
  auto r = parse_proc_maps("");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.value().empty());
  r = parse_proc_maps("\n1000-2000 r-xp 00000000 00:00 0\n\n");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r.value().size(), 1u);
}

TEST(ProcMaps, MalformedLinesAreRefusedWithTheirNumberAndText) {
  const std::vector<std::string> bad = {
      "garbage",
      "1000 r-xp 00000000 00:00 0",                       // no '-'
      "1000-zz r-xp 00000000 00:00 0",                    // bad hex
      "2000-1000 r-xp 00000000 00:00 0",                  // reversed
      "1000-1000 r-xp 00000000 00:00 0",                  // empty
      "1000-2000 r-x 00000000 00:00 0",                   // three permission characters
      "1000-2000 rwxq 00000000 00:00 0",                  // neither s nor p
      "1000-2000 xr-p 00000000 00:00 0",                  // letters out of place
      "1000-2000 r-xp",                                   // truncated after the permissions
      "1000-2000 r-xp 0000000g 00:00 0",                  // bad offset
      "1000-2000 r-xp 00000000 0000 0",                   // no ':' in the device
      "1000-2000 r-xp 00000000 00:00",                    // no inode
      "1000-2000 r-xp 00000000 00:00 x /bin/true",        // inode not decimal
      "1000-2000 r-xp 00000000 00:00 12/bin/true",        // no blank before the path
      "1000-20000000000000000000 r-xp 00000000 00:00 0",  // overflows 64 bits
  };
  for (const std::string& line : bad) {
    auto r = parse_proc_maps("1000-2000 r-xp 00000000 00:00 0 /ok\n" + line + "\n");
    ASSERT_FALSE(r.ok()) << "accepted: " << line;
    EXPECT_EQ(r.error().code(), repatch::ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("line 2"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find(line), std::string::npos) << r.error().message();
  }
}

TEST(ProcMaps, EveryTruncationOfALineParsesOrFailsWithoutCrashing) {
  const std::string line =
      "7f0000000000-7f0000001000 r-xs 00000000 00:01 5678   /memfd:x (deleted)";
  // Every prefix that reaches the first inode digit is a complete line (the inode is the last
  // mandatory field); every shorter one is not.
  const std::size_t first_inode_digit = line.find("5678");
  for (std::size_t n = 1; n <= line.size(); ++n) {
    // Heap copies of exactly n bytes, so that a read past the end is caught by sanitizers.
    auto buf = std::make_unique<char[]>(n);
    std::memcpy(buf.get(), line.data(), n);
    auto r = parse_proc_maps(std::string_view(buf.get(), n));
    EXPECT_EQ(r.ok(), n > first_inode_digit) << "prefix of " << n << " bytes";
  }
}

TEST(ProcMaps, FindMappingHonoursBoundsAndGaps) {
  auto r = parse_proc_maps(
      "1000-2000 r-xp 00000000 00:00 0\n"
      "2000-3000 rw-p 00000000 00:00 0\n"
      "5000-6000 r--p 00000000 00:00 0\n");
  ASSERT_TRUE(r.ok());
  const auto& m = r.value();
  using repatch::x86::find_mapping;
  EXPECT_EQ(find_mapping(m, 0xfff), nullptr);
  EXPECT_EQ(find_mapping(m, 0x1000), &m[0]);
  EXPECT_EQ(find_mapping(m, 0x1fff), &m[0]);
  EXPECT_EQ(find_mapping(m, 0x2000), &m[1]);
  EXPECT_EQ(find_mapping(m, 0x3000), nullptr);  // end is exclusive, then a gap
  EXPECT_EQ(find_mapping(m, 0x4fff), nullptr);
  EXPECT_EQ(find_mapping(m, 0x5800), &m[2]);
  EXPECT_EQ(find_mapping(m, 0x6000), nullptr);
  EXPECT_EQ(find_mapping({}, 0x1000), nullptr);
}

TEST(ProcMaps, DescribeMapping) {
  auto r = parse_proc_maps(
      "1000-2000 r-xs 00000000 00:01 7 /memfd:repatch-text (deleted)\n"
      "2000-3000 rw-p 00000000 00:00 0\n");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(repatch::x86::describe_mapping(r.value()[0]),
            "1000-2000 r-xs /memfd:repatch-text (deleted)");
  EXPECT_EQ(repatch::x86::describe_mapping(r.value()[1]), "2000-3000 rw-p (anonymous)");
}

int code_marker() {
  return 42;
}

TEST(ProcMaps, ReadsThisProcess) {
  auto r = repatch::x86::read_proc_maps();
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const auto& maps = r.value();
  ASSERT_FALSE(maps.empty());
  for (std::size_t i = 1; i < maps.size(); ++i) {
    EXPECT_LE(maps[i - 1].end, maps[i].begin) << "entries overlap or are out of order";
  }
  const auto* code =
      repatch::x86::find_mapping(maps, reinterpret_cast<std::uintptr_t>(&code_marker));
  ASSERT_NE(code, nullptr);
  EXPECT_TRUE(code->r && code->x && !code->w) << repatch::x86::describe_mapping(*code);

  int on_stack = 0;
  const auto* stack = repatch::x86::find_mapping(maps, reinterpret_cast<std::uintptr_t>(&on_stack));
  ASSERT_NE(stack, nullptr);
  EXPECT_TRUE(stack->r && stack->w && !stack->x) << repatch::x86::describe_mapping(*stack);

  auto heap = std::make_unique<int>(1);
  const auto* h = repatch::x86::find_mapping(maps, reinterpret_cast<std::uintptr_t>(heap.get()));
  ASSERT_NE(h, nullptr);
  EXPECT_TRUE(h->w && !h->x);
}

TEST(ProcMaps, UnreadableFileIsASystemError) {
  auto r = repatch::x86::read_proc_maps("/nonexistent/repatch/maps");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), repatch::ErrorCode::kSystem);
  EXPECT_NE(r.error().message().find("/nonexistent/repatch/maps"), std::string::npos);
  EXPECT_NE(r.error().message().find("No such file"), std::string::npos) << r.error().message();
}

}  // namespace
