// Early-return helpers for absl::Status / absl::StatusOr, which Abseil 20220623 lacks.
// Use them at every module boundary instead of exceptions (STYLE.md, "Errors").
#ifndef SHUTTLE_COMMON_STATUS_MACROS_H_
#define SHUTTLE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHUTTLE_STATUS_CONCAT_INNER(a, b) a##b
#define SHUTTLE_STATUS_CONCAT(a, b) SHUTTLE_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define SHUTTLE_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status shuttle_status_ = (expr);           \
    if (!shuttle_status_.ok()) return shuttle_status_; \
  } while (0)

// `SHUTTLE_ASSIGN_OR_RETURN(T var, StatusOr<T> expr);` declares or assigns `var` from the value
// of `expr`, or returns its status from the enclosing function.
#define SHUTTLE_ASSIGN_OR_RETURN(lhs, expr) \
  SHUTTLE_ASSIGN_OR_RETURN_IMPL(SHUTTLE_STATUS_CONCAT(shuttle_statusor_, __LINE__), lhs, expr)
#define SHUTTLE_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // SHUTTLE_COMMON_STATUS_MACROS_H_
