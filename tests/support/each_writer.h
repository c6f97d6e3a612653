// The writers that can switch a group which is not interchangeable, for hazard tests that must
// hold under each of them: INSTANTIATE_TEST_SUITE_P(Hazard, EachWriter, kStatefulWriters,
// writer_test_name) names the tests ".../stop" and ".../stopless".
#ifndef REPATCH_TESTS_SUPPORT_EACH_WRITER_H_
#define REPATCH_TESTS_SUPPORT_EACH_WRITER_H_

#include <gtest/gtest.h>

#include <string>

#include "repatch/engine.h"

namespace repatch::testing {

inline const auto kStatefulWriters =
    ::testing::Values(SwitchWriter::kStopMachine, SwitchWriter::kStopless);

inline std::string writer_test_name(const ::testing::TestParamInfo<SwitchWriter>& param_info) {
  return switch_writer_name(param_info.param);
}

}  // namespace repatch::testing

#endif  // REPATCH_TESTS_SUPPORT_EACH_WRITER_H_
