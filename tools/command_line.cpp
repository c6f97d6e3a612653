#include "tools/command_line.h"

#include <cmath>
#include <cstdio>

#include "trigger/text_fields.h"

namespace repatch::tools {

CommandLine& CommandLine::flag(std::string name, bool* set) {
  options_.push_back({std::move(name), false, [set](std::string_view) {
                        *set = true;
                        return std::optional<std::string>();
                      }});
  return *this;
}

CommandLine& CommandLine::option(std::string name, ValueReader read) {
  options_.push_back({std::move(name), true, std::move(read)});
  return *this;
}

const CommandLine::Option* CommandLine::find(std::string_view name) const {
  for (const Option& o : options_) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

int CommandLine::usage_error(const std::string& message) const {
  std::fprintf(stderr, "%s: %s\n", command_.c_str(), message.c_str());
  return 2;
}

std::optional<int> CommandLine::parse(int argc, char** argv) const {
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_, stdout);
      return 0;
    }
    // "--name=value" is "--name value"; a lone "-x" or a word is no option of any command.
    std::string_view name = arg;
    std::optional<std::string_view> inline_value;
    if (const std::size_t eq = arg.find('=');
        arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    const Option* option = find(name);
    if (option == nullptr) {
      std::fprintf(stderr, "%s: unknown argument %s\n\n%s", command_.c_str(), quoted(arg).c_str(),
                   usage_);
      return 2;
    }
    std::string_view value;
    if (!option->takes_value) {
      if (inline_value) return usage_error(option->name + " takes no value");
    } else if (inline_value) {
      value = *inline_value;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return usage_error(option->name + " needs a value");
    }
    if (std::optional<std::string> wanted = option->read(value)) {
      return usage_error(option->name + " " + *wanted);
    }
  }
  return std::nullopt;
}

std::string quoted(std::string_view text) {
  return "'" + triggers::text::excerpt(text) + "'";
}

ValueReader number_into(double* out) {
  return [out](std::string_view value) -> std::optional<std::string> {
    const std::optional<double> v = triggers::text::parse_double(value);
    if (!v) return "wants a number, got " + quoted(value);
    *out = *v;
    return std::nullopt;
  };
}

ValueReader whole_into(std::uint64_t* out) {
  return [out](std::string_view value) -> std::optional<std::string> {
    const std::optional<std::uint64_t> v = triggers::text::parse_u64(value);
    if (!v) return "wants a whole number >= 0, got " + quoted(value);
    *out = *v;
    return std::nullopt;
  };
}

ValueReader count_into(int* out) {
  return [out](std::string_view value) -> std::optional<std::string> {
    constexpr std::uint64_t kMaxCount = 1000000000;
    const std::optional<std::uint64_t> v = triggers::text::parse_u64(value);
    if (!v) return "wants a whole number >= 0, got " + quoted(value);
    if (*v > kMaxCount) return "is out of range: " + quoted(value);
    *out = static_cast<int>(*v);
    return std::nullopt;
  };
}

ValueReader seconds_into(std::chrono::milliseconds* out) {
  return [out](std::string_view value) -> std::optional<std::string> {
    constexpr double kMaxSeconds = 1e9;
    const std::optional<double> seconds = triggers::text::parse_double(value);
    if (!seconds) return "wants a number, got " + quoted(value);
    if (*seconds < 0 || *seconds > kMaxSeconds) return "wants seconds >= 0, got " + quoted(value);
    *out = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(*seconds * 1000.0)));
    return std::nullopt;
  };
}

std::vector<std::string> comma_list(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    const std::string_view name = text.substr(0, comma);
    if (!name.empty()) out.emplace_back(name);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  return out;
}

}  // namespace repatch::tools
