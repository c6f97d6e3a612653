// A minimal streaming JSON writer for the command's --json output.
#ifndef REPATCH_TOOLS_JSON_H_
#define REPATCH_TOOLS_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace repatch::tools {

class JsonWriter {
 public:
  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  /// The key of the next value inside an object.
  JsonWriter& key(std::string_view name);
  JsonWriter& value(std::string_view s);
  JsonWriter& value(const char* s) { return value(std::string_view(s)); }
  JsonWriter& value(std::uint64_t n);
  JsonWriter& value(bool b);
  /// A finite number, up to 6 significant digits ("12.5"); null for NaN and infinities.
  JsonWriter& number(double d);
  JsonWriter& null();

  const std::string& str() const { return out_; }

 private:
  void separate();
  std::string out_;
  std::vector<bool> first_;  // per open container: no element written yet
  bool after_key_ = false;
};

}  // namespace repatch::tools

#endif  // REPATCH_TOOLS_JSON_H_
