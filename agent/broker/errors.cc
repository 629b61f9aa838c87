#include "agent/broker/errors.h"

#include <cerrno>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shuttle::agent::broker {
namespace {

// Payload type URL under which the errno travels (decimal text).
constexpr char kErrnoPayload[] = "shuttle.dev/broker/errno";

}  // namespace

absl::Status ErrnoErrorWithCode(absl::StatusCode code, int err, absl::string_view what) {
  absl::Status status(code, absl::ErrnoToStatus(err, what).message());
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return status;
}

absl::Status ErrnoError(int err, absl::string_view what) {
  return ErrnoErrorWithCode(absl::ErrnoToStatusCode(err), err, what);
}

std::optional<int> AttachedErrno(const absl::Status& status) {
  auto payload = status.GetPayload(kErrnoPayload);  // absl::optional here, not std::.
  int err = 0;
  if (payload && absl::SimpleAtoi(static_cast<std::string>(*payload), &err) && err > 0) return err;
  return std::nullopt;
}

int ErrnoForStatus(const absl::Status& status) {
  if (std::optional<int> err = AttachedErrno(status)) return *err;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return EINVAL;
    case absl::StatusCode::kNotFound:
      return ENOENT;
    case absl::StatusCode::kPermissionDenied:
      return EACCES;
    case absl::StatusCode::kDeadlineExceeded:
      return ETIMEDOUT;
    case absl::StatusCode::kResourceExhausted:
      return EAGAIN;
    case absl::StatusCode::kFailedPrecondition:
      return EPROTOTYPE;
    default:
      return ECONNREFUSED;
  }
}

}  // namespace shuttle::agent::broker
