// Errors of the broker: every failure names the VM, the object and the errno, and carries that
// errno so the code that answers the intercepted call can fail it with the errno the caller
// would have seen had it reached the object itself (ECONNREFUSED, ENOENT, ETIMEDOUT, ...).
#ifndef SHUTTLE_AGENT_BROKER_ERRORS_H_
#define SHUTTLE_AGENT_BROKER_ERRORS_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace shuttle::agent::broker {

// absl::ErrnoToStatus(err, what) with `err` attached, so ErrnoForStatus() returns it exactly.
absl::Status ErrnoError(int err, absl::string_view what);

// The same, with a code of the caller's choice (e.g. DEADLINE_EXCEEDED for ETIMEDOUT).
absl::Status ErrnoErrorWithCode(absl::StatusCode code, int err, absl::string_view what);

// The errno attached by ErrnoError / ErrnoErrorWithCode, if any.
std::optional<int> AttachedErrno(const absl::Status& status);

// The positive errno an intercepted call should fail with for `status` (not OK): the errno
// attached by ErrnoError, else one chosen by the status code (e.g. INVALID_ARGUMENT -> EINVAL,
// DEADLINE_EXCEEDED -> ETIMEDOUT, anything unexpected -> ECONNREFUSED). Thread-safe.
int ErrnoForStatus(const absl::Status& status);

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_ERRORS_H_
