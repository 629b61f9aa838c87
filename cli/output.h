// How shuttlectl shows results: aligned tables and key/value blocks for people, protobuf JSON
// for automation, and the one-line form of an error. Pure formatting; the caller writes.
#ifndef SHUTTLE_CLI_OUTPUT_H_
#define SHUTTLE_CLI_OUTPUT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"

namespace shuttle::cli {

// Columns padded to their widest cell (counted in UTF-8 characters), two spaces apart, no
// trailing blanks. An empty cell shows as "-" so that columns stay parseable by awk.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);
  // A row shorter than the header is padded with empty cells; a longer one is cut.
  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }
  // The header line and every row, each ending in '\n'.
  std::string Render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// "key:   value" lines with the values aligned, in the given order.
std::string KeyValues(const std::vector<std::pair<std::string, std::string>>& pairs);

// Protobuf JSON (proto3 mapping: lowerCamelCase names, enum names, every scalar field printed
// even when zero, so automation never has to guess a default). Pretty unless `compact`; ends
// with '\n'.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool compact = false);

// "2024-05-01T12:00:00Z" (UTC, seconds); "-" when unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& ts);

// A duration for people, to the microsecond: "35us", "1.234ms", "2m30s"; "0" when zero.
std::string FormatDuration(const google::protobuf::Duration& d);

// Collapses newlines (and the blanks around them) to "; " so a message fits on one line.
std::string OneLine(absl::string_view text);

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_OUTPUT_H_
