// A minimal streaming JSON writer: the --json output of the command and of the stress report.
#ifndef REPATCH_BASE_JSON_H_
#define REPATCH_BASE_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace repatch::text {

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
  /// A finite number with up to 6 significant decimals ("%.6g"); NaN and infinities become null.
  JsonWriter& value(double d);
  /// null: a value that does not exist (rather than a made-up zero).
  JsonWriter& null_value();

  const std::string& str() const { return out_; }

 private:
  void separate();
  std::string out_;
  std::vector<bool> first_;  // per open container: no element written yet
  bool after_key_ = false;
};

}  // namespace repatch::text

#endif  // REPATCH_BASE_JSON_H_
