#include "engine/symbolizer.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "base/text.h"

namespace repatch::engine {
namespace {

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

// The load bias of the main executable: what its symbol values are shifted by at run time.
std::uintptr_t executable_bias() {
  std::uintptr_t bias = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* out) {
        *static_cast<std::uintptr_t*>(out) = info->dlpi_addr;
        return 1;  // the first object is the executable
      },
      &bias);
  return bias;
}

// A read-only mapping of a whole file, unmapped on scope exit.
class MappedFile {
 public:
  explicit MappedFile(const char* path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st {};
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
      void* p = mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED) {
        data_ = static_cast<const std::uint8_t*>(p);
        size_ = static_cast<std::size_t>(st.st_size);
      }
    }
    close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) munmap(const_cast<std::uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool contains(std::size_t offset, std::size_t length) const {
    return offset <= size_ && length <= size_ - offset;
  }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace

Symbolizer::Symbolizer() {
  MappedFile file("/proc/self/exe");
  if (!file.contains(0, sizeof(Elf64_Ehdr))) return;
  Elf64_Ehdr eh;
  std::memcpy(&eh, file.data(), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
      eh.e_shentsize != sizeof(Elf64_Shdr) ||
      !file.contains(eh.e_shoff, std::size_t{eh.e_shnum} * sizeof(Elf64_Shdr))) {
    return;
  }
  auto section = [&](std::size_t i) {
    Elf64_Shdr sh;
    std::memcpy(&sh, file.data() + eh.e_shoff + i * sizeof(Elf64_Shdr), sizeof sh);
    return sh;
  };
  const std::uintptr_t bias = executable_bias();
  for (std::size_t i = 0; i < eh.e_shnum; ++i) {
    const Elf64_Shdr symtab = section(i);
    if (symtab.sh_type != SHT_SYMTAB || symtab.sh_link >= eh.e_shnum) continue;
    const Elf64_Shdr strtab = section(symtab.sh_link);
    if (!file.contains(symtab.sh_offset, symtab.sh_size) ||
        !file.contains(strtab.sh_offset, strtab.sh_size)) {
      continue;
    }
    const std::size_t count = symtab.sh_size / sizeof(Elf64_Sym);
    for (std::size_t k = 0; k < count; ++k) {
      Elf64_Sym sym;
      std::memcpy(&sym, file.data() + symtab.sh_offset + k * sizeof(Elf64_Sym), sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_value == 0 ||
          sym.st_name >= strtab.sh_size) {
        continue;
      }
      const char* raw = reinterpret_cast<const char*>(file.data() + strtab.sh_offset + sym.st_name);
      if (strnlen(raw, strtab.sh_size - sym.st_name) == strtab.sh_size - sym.st_name) continue;
      const std::uintptr_t begin = bias + sym.st_value;
      symbols_.push_back({begin, begin + std::max<std::uint64_t>(sym.st_size, 1), demangle(raw)});
    }
  }
  // name() picks the last of several symbols at one address. The op macros alias each call
  // variant's target as repatch_callable_<op>__<variant>; the target's own name says more.
  auto preferred = [](const Symbol& s) { return s.name.rfind("repatch_callable_", 0) != 0; };
  std::sort(symbols_.begin(), symbols_.end(), [&](const Symbol& a, const Symbol& b) {
    return a.begin != b.begin ? a.begin < b.begin : preferred(a) < preferred(b);
  });
}

std::string Symbolizer::name(std::uintptr_t address) const {
  auto it = std::upper_bound(symbols_.begin(), symbols_.end(), address,
                             [](std::uintptr_t a, const Symbol& s) { return a < s.begin; });
  if (it != symbols_.begin()) {
    --it;
    if (address < it->end) {
      return address == it->begin ? it->name : it->name + "+" + text::hex(address - it->begin);
    }
  }
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(address), &info) != 0 && info.dli_sname != nullptr) {
    const auto base = reinterpret_cast<std::uintptr_t>(info.dli_saddr);
    const std::string fn = demangle(info.dli_sname);
    return address == base ? fn : fn + "+" + text::hex(address - base);
  }
  return "";
}

const Symbolizer& symbolizer() {
  static const Symbolizer instance;
  return instance;
}

}  // namespace repatch::engine
