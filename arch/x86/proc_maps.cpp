#include "arch/x86/proc_maps.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>

#include "base/errno_text.h"

namespace repatch::x86 {
namespace {

// A cursor over one line. Every take_* returns false instead of reading past the end, so a
// truncated or garbled line can never crash the parser.
class LineCursor {
 public:
  explicit LineCursor(std::string_view line) : rest_(line) {}

  bool take_hex(std::uint64_t& out) { return take_number(out, 16); }
  bool take_dec(std::uint64_t& out) { return take_number(out, 10); }

  bool take_char(char c) {
    if (rest_.empty() || rest_.front() != c) {
      return false;
    }
    rest_.remove_prefix(1);
    return true;
  }

  // At least one blank: fields are separated by one space, the path by padding spaces.
  bool take_blanks() {
    std::size_t n = 0;
    while (n < rest_.size() && rest_[n] == ' ') {
      ++n;
    }
    rest_.remove_prefix(n);
    return n > 0;
  }

  bool take_word(std::string_view& out) {
    std::size_t n = 0;
    while (n < rest_.size() && rest_[n] != ' ') {
      ++n;
    }
    out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return n > 0;
  }

  bool at_end() const { return rest_.empty(); }
  std::string_view rest() const { return rest_; }

 private:
  bool take_number(std::uint64_t& out, int base) {
    const char* first = rest_.data();
    const char* last = first + rest_.size();
    auto [ptr, ec] = std::from_chars(first, last, out, base);
    if (ec != std::errc() || ptr == first) {
      return false;
    }
    rest_.remove_prefix(static_cast<std::size_t>(ptr - first));
    return true;
  }

  std::string_view rest_;
};

bool parse_flag(char c, char yes, bool& out) {
  if (c == yes) {
    out = true;
    return true;
  }
  if (c == '-') {
    out = false;
    return true;
  }
  return false;
}

// Returns an empty string on success, else what is wrong with the line.
const char* parse_line(std::string_view line, MapEntry& entry) {
  LineCursor cur(line);
  std::uint64_t begin = 0, end = 0;
  if (!cur.take_hex(begin) || !cur.take_char('-') || !cur.take_hex(end)) {
    return "expected an address range \"begin-end\" in hex";
  }
  if (begin >= end) {
    return "the range is empty or reversed";
  }
  std::string_view perms;
  if (!cur.take_blanks() || !cur.take_word(perms) || perms.size() != 4) {
    return "expected four permission characters such as \"r-xp\"";
  }
  if (!parse_flag(perms[0], 'r', entry.r) || !parse_flag(perms[1], 'w', entry.w) ||
      !parse_flag(perms[2], 'x', entry.x) || !(perms[3] == 's' || perms[3] == 'p')) {
    return "the permissions are not of the form [r-][w-][x-][sp]";
  }
  std::uint64_t offset = 0, major = 0, minor = 0, inode = 0;
  if (!cur.take_blanks() || !cur.take_hex(offset)) {
    return "expected a hex file offset";
  }
  if (!cur.take_blanks() || !cur.take_hex(major) || !cur.take_char(':') || !cur.take_hex(minor)) {
    return "expected a device \"major:minor\" in hex";
  }
  if (!cur.take_blanks() || !cur.take_dec(inode)) {
    return "expected a decimal inode";
  }
  // The path is the rest of the line after the padding and may itself contain spaces.
  if (!cur.at_end() && !cur.take_blanks()) {
    return "expected a blank between the inode and the path";
  }
  entry.begin = static_cast<std::uintptr_t>(begin);
  entry.end = static_cast<std::uintptr_t>(end);
  entry.shared = perms[3] == 's';
  entry.offset = offset;
  entry.inode = inode;
  entry.path.assign(cur.rest());
  return "";
}

}  // namespace

Result<std::vector<MapEntry>> parse_proc_maps(std::string_view text) {
  std::vector<MapEntry> maps;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty()) {
      continue;
    }
    MapEntry entry;
    const char* problem = parse_line(line, entry);
    if (*problem != '\0') {
      return Error(ErrorCode::kInvalidArgument, "maps line " + std::to_string(line_no) +
                                                    " is malformed (" + problem + "): \"" +
                                                    std::string(line.substr(0, 200)) + "\"");
    }
    maps.push_back(std::move(entry));
  }
  return maps;
}

Result<std::vector<MapEntry>> read_proc_maps(const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return Error(ErrorCode::kSystem, std::string("open(\"") + path +
                                         "\") for reading failed: " + text::errno_text(err));
  }
  // Read to the end before parsing: the kernel produces the file in page-sized chunks, and a
  // line must never be split between two parse calls.
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      int err = errno;
      ::close(fd);
      return Error(ErrorCode::kSystem,
                   std::string("read(\"") + path + "\") failed: " + text::errno_text(err));
    }
    if (n == 0) {
      break;
    }
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  auto parsed = parse_proc_maps(text);
  if (!parsed.ok()) {
    return Error(ErrorCode::kInvalidArgument, std::string(path) + ": " + parsed.error().message());
  }
  return parsed;
}

const MapEntry* find_mapping(const std::vector<MapEntry>& maps, std::uintptr_t address) {
  // The first entry that begins after `address`; the one before it is the only candidate.
  auto it = std::upper_bound(maps.begin(), maps.end(), address,
                             [](std::uintptr_t a, const MapEntry& e) { return a < e.begin; });
  if (it == maps.begin()) {
    return nullptr;
  }
  --it;
  return it->contains(address) ? &*it : nullptr;
}

std::string describe_mapping(const MapEntry& entry) {
  char head[80];
  std::snprintf(head, sizeof head, "%" PRIxPTR "-%" PRIxPTR " %c%c%c%c", entry.begin, entry.end,
                entry.r ? 'r' : '-', entry.w ? 'w' : '-', entry.x ? 'x' : '-',
                entry.shared ? 's' : 'p');
  std::string out(head);
  if (!entry.path.empty()) {
    out += ' ';
    out += entry.path;
  } else {
    out += " (anonymous)";
  }
  return out;
}

}  // namespace repatch::x86
