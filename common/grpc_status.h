// Conversion between absl::Status and grpc::Status. Convert only at the service edge
// (STYLE.md, "Errors"): handlers call ToGrpcStatus, clients call FromGrpcStatus.
#ifndef SHUTTLE_COMMON_GRPC_STATUS_H_
#define SHUTTLE_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace shuttle {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_GRPC_STATUS_H_
