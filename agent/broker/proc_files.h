// Small readers of /proc files for the broker (fdinfo of pidfds and of a caller's fds, a
// thread's status). Internal to agent/broker; thread-safe.
#ifndef SHUTTLE_AGENT_BROKER_PROC_FILES_H_
#define SHUTTLE_AGENT_BROKER_PROC_FILES_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shuttle::agent::broker_internal {

// The whole content of a small /proc file (at most 64 KiB). NOT_FOUND if it does not exist (the
// process or fd is gone); the error names the path and errno.
absl::StatusOr<std::string> ReadProcFile(const std::string& path);

// The value after "KEY:" on the line that starts with it (surrounding blanks trimmed), e.g.
// FieldValue("pos:\t0\nflags:\t02\n", "flags") == "02"; nullopt when no line has that key.
std::optional<absl::string_view> FieldValue(absl::string_view text, absl::string_view key);

}  // namespace shuttle::agent::broker_internal

#endif  // SHUTTLE_AGENT_BROKER_PROC_FILES_H_
