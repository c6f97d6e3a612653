// The replay source: readings from a hint trace, in order.
#include "repatch/triggers.h"
#include "trigger/file_text.h"
#include "trigger/hint_trace.h"

namespace repatch::triggers {
namespace {

class ReplaySource final : public HintSource {
 public:
  explicit ReplaySource(std::vector<HintReading> readings) : readings_(std::move(readings)) {}
  std::string_view name() const override { return "replay"; }
  Result<std::optional<HintReading>> read() override {
    if (next_ == readings_.size()) return std::optional<HintReading>();
    return std::optional<HintReading>(readings_[next_++]);
  }

 private:
  std::vector<HintReading> readings_;
  std::size_t next_ = 0;
};

}  // namespace

Result<std::unique_ptr<HintSource>> make_replay_source(std::string_view trace) {
  Result<std::vector<HintReading>> readings = parse_hint_trace(trace);
  if (!readings.ok()) return readings.error();
  return std::unique_ptr<HintSource>(std::make_unique<ReplaySource>(std::move(readings.value())));
}

Result<std::unique_ptr<HintSource>> load_replay_source(const std::string& path) {
  Result<std::optional<std::string>> text = read_file_text(path, kMaxTraceBytes);
  if (!text.ok()) return text.error();
  if (!text.value()) return Error(ErrorCode::kSystem, "hint trace " + path + " does not exist");
  Result<std::unique_ptr<HintSource>> source = make_replay_source(*text.value());
  if (!source.ok()) {
    return Error(source.error().code(), path + ": " + source.error().message());
  }
  return source;
}

}  // namespace repatch::triggers
