// AuditService over gRPC: Query (one page of stored records) and Follow (a server stream of
// records as they are ingested). Both need the viewer or admin role.
//
// Follow: with filter.since set, the stream first replays the stored records that match (paged
// from the store on the executor), then goes on with new ones, with no gap and no duplicate
// between the two; without since it sends only records ingested after the call started (as
// `tail -f` does; ask for history with since). A follower never slows ingestion: records wait
// in a bounded per-stream queue, and a follower that falls that far behind is ended with
// RESOURCE_EXHAUSTED (nothing is dropped silently; the client resumes with since = the time of
// the last record it saw). The response headers are sent once the stream is subscribed, so a
// client that has them knows it misses nothing ingested later. Controller shutdown
// (AuditLog::Close) ends every stream with UNAVAILABLE.
#ifndef SHUTTLE_CONTROLLER_SERVICE_AUDIT_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_AUDIT_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <cstdint>

#include "common/executor.h"
#include "controller/audit/audit_log.h"
#include "controller/authz/authz.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "shuttle/v1/audit.grpc.pb.h"

namespace shuttle::controller {

struct AuditServiceOptions {
  // Records a Follow stream may have waiting (stored records being replayed are not counted
  // until they are read from the store). More ends the stream with RESOURCE_EXHAUSTED.
  size_t follower_queue_limit = 10000;
  // Records read from the store per page while replaying history.
  uint32_t replay_page = 500;
};

class AuditServiceImpl final : public v1::AuditService::CallbackService {
 public:
  // Collaborators are borrowed and must outlive the service and every stream it serves (the
  // server's Shutdown+Wait ends the streams). Metrics:
  // shuttle_controller_audit_follow_overflows_total (streams ended for falling behind).
  AuditServiceImpl(AuditLog& log, const Authorizer& authorizer, Executor& executor,
                   prometheus::Registry& metrics, AuditServiceOptions options = {});

  grpc::ServerUnaryReactor* Query(grpc::CallbackServerContext* ctx,
                                  const v1::QueryAuditRequest* req,
                                  v1::QueryAuditResponse* resp) override;
  grpc::ServerWriteReactor<v1::AuditRecord>* Follow(grpc::CallbackServerContext* ctx,
                                                    const v1::FollowAuditRequest* req) override;

 private:
  AuditLog& log_;
  const Authorizer& authorizer_;
  Executor& executor_;
  const AuditServiceOptions options_;
  prometheus::Counter& overflows_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_AUDIT_SERVICE_H_
