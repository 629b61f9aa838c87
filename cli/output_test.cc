#include "cli/output.h"

#include <string>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "shuttle/v1/policy.pb.h"

namespace shuttle::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(TableTest, AlignsColumnsWithoutTrailingBlanks) {
  Table table({"NAME", "REVISION", "AUTHOR"});
  table.AddRow({"webapp", "12", "admin"});
  table.AddRow({"db", "3", "alice-the-operator"});
  EXPECT_EQ(table.rows(), 2u);
  EXPECT_EQ(table.Render(),
            "NAME    REVISION  AUTHOR\n"
            "webapp  12        admin\n"
            "db      3         alice-the-operator\n");
}

TEST(TableTest, HeaderOnlyWhenEmpty) {
  Table table({"A", "BB"});
  EXPECT_EQ(table.Render(), "A  BB\n");
}

TEST(TableTest, EmptyShortAndMultilineCellsKeepTheGrid) {
  Table table({"A", "B", "C"});
  table.AddRow({"", "x"});
  table.AddRow({"line\nbreak", "tab\there", "c", "extra"});
  EXPECT_EQ(table.Render(),
            "A           B         C\n"
            "-           x         -\n"
            "line break  tab here  c\n");
}

TEST(TableTest, CountsUtf8CharactersNotBytes) {
  Table table({"VM", "X"});
  table.AddRow({"caf\xc3\xa9", "1"});  // "café": 5 bytes, 4 columns.
  table.AddRow({"abcde", "2"});
  EXPECT_EQ(table.Render(),
            "VM     X\n"
            "caf\xc3\xa9   1\n"
            "abcde  2\n");
}

TEST(KeyValuesTest, AlignsValues) {
  EXPECT_EQ(KeyValues({{"verdict", "allow"}, {"decided by", "web/db"}, {"reason", ""}}),
            "verdict:     allow\n"
            "decided by:  web/db\n"
            "reason:      -\n");
}

TEST(ToJsonTest, PrintsZeroFieldsAndEnumNames) {
  v1::ValidateResponse response;
  response.set_valid(false);
  v1::ValidationError* error = response.add_errors();
  error->set_file("bad.yaml");
  error->set_line(3);
  error->set_field("rules[0].action");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string json, ToJson(response));
  EXPECT_THAT(json, HasSubstr("\"valid\": false"));
  EXPECT_THAT(json, HasSubstr("\"field\": \"rules[0].action\""));
  EXPECT_EQ(json.back(), '\n');

  // Round trip: automation can parse what we print.
  v1::ValidateResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok());
  EXPECT_EQ(parsed.errors(0).line(), 3u);

  v1::Decision decision;
  decision.set_verdict(v1::VERDICT_DENY);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string compact, ToJson(decision, /*compact=*/true));
  EXPECT_THAT(compact, HasSubstr("\"verdict\":\"VERDICT_DENY\""));
  EXPECT_EQ(compact.find('\n'), compact.size() - 1);
}

TEST(FormatTimestampTest, UtcSecondsOrDash) {
  google::protobuf::Timestamp ts;
  EXPECT_EQ(FormatTimestamp(ts), "-");
  ts.set_seconds(1714564800);
  ts.set_nanos(123);
  EXPECT_EQ(FormatTimestamp(ts), "2024-05-01T12:00:00Z");
}

TEST(FormatDurationTest, ToTheMicrosecond) {
  google::protobuf::Duration d;
  EXPECT_EQ(FormatDuration(d), "0");
  d.set_nanos(35'400);
  EXPECT_EQ(FormatDuration(d), "35us");
  d.set_nanos(1'234'567);
  EXPECT_EQ(FormatDuration(d), "1.234ms");
  d.set_seconds(150);
  d.set_nanos(0);
  EXPECT_EQ(FormatDuration(d), "2m30s");
}

TEST(OneLineTest, JoinsLines) {
  EXPECT_EQ(OneLine("a.yaml:1:1: name: bad\n  a.yaml:2:3: kind: worse\n"),
            "a.yaml:1:1: name: bad; a.yaml:2:3: kind: worse");
  EXPECT_EQ(OneLine("plain"), "plain");
  EXPECT_EQ(OneLine(""), "");
  EXPECT_THAT(OneLine("x\r\ny"), Not(HasSubstr("\n")));
}

}  // namespace
}  // namespace shuttle::cli
