// The on-disk record of one VM (state_dir/NAME/state): what a restarted agent needs to find the
// VM's init again and to make sure the pid still names that init. Text, written atomically.
#ifndef SHUTTLE_AGENT_VM_VM_STATE_H_
#define SHUTTLE_AGENT_VM_VM_STATE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/vm/vm_manager.h"

namespace shuttle::agent {

struct VmRecord {
  std::string name;
  pid_t init_pid = 0;
  // Field 22 of /proc/PID/stat (clock ticks after boot): guards against pid reuse.
  uint64_t init_start_time = 0;
  VmNamespaces ns;
  absl::Time created;
  friend bool operator==(const VmRecord&, const VmRecord&) = default;
};

// "key value" lines, one per field, after a "version 1" line.
std::string SerializeVmRecord(const VmRecord& record);

// INVALID_ARGUMENT naming the line or the missing field on malformed input.
absl::StatusOr<VmRecord> ParseVmRecord(absl::string_view text);

// Writes `content` to PATH.tmp, fsyncs it, renames it over `path` and fsyncs the directory.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view content);

// The whole file (up to 1 MiB); NOT_FOUND if absent.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_VM_VM_STATE_H_
