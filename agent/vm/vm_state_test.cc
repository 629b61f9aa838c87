#include "agent/vm/vm_state.h"

#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "agent/vm/vm_manager.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::IsOkAndHolds;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

VmRecord Sample() {
  VmRecord r;
  r.name = "web-1";
  r.init_pid = 4242;
  r.init_start_time = 987654321;
  r.ns = {4026532001, 4026532002, 4026532003, 4026532004, 4026532005};
  r.created = absl::FromUnixNanos(1700000000123456789);
  return r;
}

TEST(VmRecord, RoundTrips) {
  const VmRecord r = Sample();
  EXPECT_THAT(ParseVmRecord(SerializeVmRecord(r)), IsOkAndHolds(r));
}

TEST(VmRecord, RejectsMissingField) {
  std::string text = SerializeVmRecord(Sample());
  text.erase(text.find("ns_ipc"), text.find('\n', text.find("ns_ipc")) - text.find("ns_ipc") + 1);
  EXPECT_THAT(ParseVmRecord(text),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing field ns_ipc")));
}

TEST(VmRecord, RejectsBadValueWithLine) {
  std::string text = SerializeVmRecord(Sample());
  text.replace(text.find("init_pid 4242"), 13, "init_pid -1");
  EXPECT_THAT(ParseVmRecord(text), StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("line 4: bad value '-1' for init_pid")));
}

TEST(VmRecord, RejectsUnknownKeyAndVersion) {
  EXPECT_THAT(ParseVmRecord(SerializeVmRecord(Sample()) + "color blue\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown key 'color'")));
  std::string text = SerializeVmRecord(Sample());
  text.replace(text.find("version 1"), 9, "version 2");
  EXPECT_THAT(ParseVmRecord(text),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad value '2' for version")));
}

TEST(VmState, WritesAtomicallyAndReadsBack) {
  char tmpl[] = "/tmp/vm_state_test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/state";
  EXPECT_THAT(ReadSmallFile(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
  ASSERT_THAT(WriteFileAtomically(path, "one"), IsOk());
  ASSERT_THAT(WriteFileAtomically(path, "two"), IsOk());
  EXPECT_THAT(ReadSmallFile(path), IsOkAndHolds(std::string("two")));
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0);
  unlink(path.c_str());
  rmdir(tmpl);
}

TEST(VmName, Validates) {
  EXPECT_THAT(ValidateVmName("web"), IsOk());
  EXPECT_THAT(ValidateVmName("db-2"), IsOk());
  EXPECT_THAT(ValidateVmName("0"), IsOk());
  EXPECT_THAT(ValidateVmName(std::string(31, 'a')), IsOk());
  EXPECT_THAT(ValidateVmName(std::string(32, 'a')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1 to 31")));
  EXPECT_THAT(ValidateVmName(""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1 to")));
  for (const char* bad : {"-web", "Web", "web_1", "a/b", "..", "a b", "web\n"}) {
    EXPECT_THAT(ValidateVmName(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("only a-z, 0-9")))
        << bad;
  }
  EXPECT_THAT(ValidateVmName("host"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reserved")));
}

}  // namespace
}  // namespace shuttle::agent
