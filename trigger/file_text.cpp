#include "trigger/file_text.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "base/errno_text.h"

namespace repatch::triggers {

Result<std::optional<std::string>> read_file_text(const std::string& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<std::string>();
    return Error(ErrorCode::kSystem, "cannot open " + path + ": " + text::errno_text(errno));
  }
  std::string out;
  char buffer[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      return Error(ErrorCode::kSystem, "cannot read " + path + ": " + text::errno_text(saved));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_bytes) {
      ::close(fd);
      return Error(ErrorCode::kInvalidArgument,
                   path + " is longer than " + std::to_string(max_bytes) + " bytes");
    }
    out.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return std::optional<std::string>(std::move(out));
}

}  // namespace repatch::triggers
