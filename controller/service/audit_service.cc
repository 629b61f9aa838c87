#include "controller/service/audit_service.h"

#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "controller/service/unary.h"

namespace shuttle::controller {
namespace {

// One Follow stream. Three sources feed it: pages of stored records (replay, read on the
// executor), new records from the AuditLog (OnAuditRecord, on ingesting threads) and write
// completions (gRPC threads). All state is under mu_; gRPC and the executor are called only
// with mu_ released, as decided by NextStep() while it was held. Finish is called once nothing
// is in flight (no headers, no write, no page read), so OnDone, which unsubscribes and deletes
// this, never races with any of them.
class FollowReactor final : public grpc::ServerWriteReactor<v1::AuditRecord>,
                            public AuditSubscriber {
 public:
  FollowReactor(AuditLog& log, Executor& executor, const AuditServiceOptions& options,
                prometheus::Counter& overflows, const v1::AuditFilter& filter,
                const absl::Status& allowed)
      : log_(log), executor_(executor), options_(options), overflows_(overflows), filter_(filter) {
    if (!allowed.ok()) {
      Finish(ToGrpcStatus(allowed));
      return;
    }
    const bool replay = filter_.has_since();
    {
      absl::MutexLock lock(&mu_);
      replaying_ = replay;
      fetching_ = replay;       // Holds Finish back until the first page is read.
      sending_headers_ = true;  // Holds Finish and writes back until the headers are sent.
    }
    // Subscribe before reading the store, so no record falls between the two (see FetchPage),
    // and before sending the response headers: a client that has them (WaitForInitialMetadata)
    // knows that every record ingested from then on reaches it.
    log_.Subscribe(filter_, this);
    StartSendInitialMetadata();
    if (replay) executor_.Run([this] { FetchPage(); });
  }

  void OnSendInitialMetadataDone(bool ok) override {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      sending_headers_ = false;
      if (!ok) EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "sending headers failed"));
      step = NextStep();
    }
    Take(step);
  }

  void OnAuditRecord(const v1::AuditRecord& record, uint64_t sequence) override {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      const size_t waiting = replaying_ ? live_.size() : queue_.size();
      if (waiting >= options_.follower_queue_limit) {
        Overflow();
      } else if (replaying_) {
        live_.emplace_back(sequence, record);
      } else {
        queue_.push_back(record);
      }
      step = NextStep();
    }
    Take(step);
  }

  void OnAuditLogClosed() override {
    Close(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                       "the controller is shutting down; follow again once it is back"));
  }

  void OnWriteDone(bool ok) override {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      queue_.pop_front();
      if (!ok) EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the write failed"));
      step = NextStep();
    }
    Take(step);
  }

  void OnCancel() override {
    Close(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
  }

  void OnDone() override {
    log_.Unsubscribe(this);  // Waits for a delivery in progress; none follows.
    delete this;
  }

 private:
  // What to do once mu_ is released; at most one thing.
  struct Step {
    const v1::AuditRecord* write = nullptr;
    bool fetch = false;
    bool finish = false;
    grpc::Status status;
  };

  Step NextStep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Step step;
    // An operation in flight decides next when it completes.
    if (writing_ || sending_headers_ || finish_called_) return step;
    if (finished_) {
      if (!fetching_) {
        finish_called_ = true;
        step.finish = true;
        step.status = final_status_;
      }
      return step;
    }
    if (!queue_.empty()) {
      writing_ = true;
      step.write = &queue_.front();  // Stays put: only OnWriteDone pops the front.
    } else if (replaying_ && !fetching_) {
      fetching_ = true;
      step.fetch = true;
    }
    return step;
  }

  void Take(const Step& step) {
    if (step.write != nullptr) {
      StartWrite(step.write);
    } else if (step.fetch) {
      executor_.Run([this] { FetchPage(); });
    } else if (step.finish) {
      Finish(step.status);
    }
  }

  void Close(const grpc::Status& status) {
    Step step;
    {
      absl::MutexLock lock(&mu_);
      EndLocked(status);
      step = NextStep();
    }
    Take(step);
  }

  // Ends the stream with `status` (the first reason wins) once nothing is in flight; records
  // not written yet are dropped.
  void EndLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    final_status_ = status;
    replaying_ = false;
    live_.clear();
    // The front may be in flight; it stays until its OnWriteDone.
    queue_.erase(writing_ ? queue_.begin() + 1 : queue_.begin(), queue_.end());
  }

  void Overflow() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    overflows_.Increment();
    EndLocked(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("this follower fell behind: ", options_.follower_queue_limit,
                     " records were waiting to be sent. The stream ends rather than skip "
                     "records; follow again with since = the time of the last record received")));
  }

  // Reads the next page of stored records (on the executor). The subscription started before
  // the first page was read, so every matching record is either in some page (stored before
  // the last page was read) or was delivered live with a higher sequence than any page holds:
  // after the last page, live records up to last_sequence_ are the pages' and are dropped.
  void FetchPage() {
    std::string token;
    {
      absl::MutexLock lock(&mu_);
      token = page_token_;
    }
    absl::StatusOr<AuditPage> page = log_.Query(filter_, options_.replay_page, token);
    Step step;
    {
      absl::MutexLock lock(&mu_);
      fetching_ = false;
      if (!page.ok()) {
        EndLocked(ToGrpcStatus(page.status()));
      } else if (!finished_) {
        for (size_t i = 0; i < page->records.size(); ++i) {
          queue_.push_back(std::move(page->records[i]));
          last_sequence_ = page->sequences[i];
        }
        if (page->next_page_token.empty()) {
          replaying_ = false;
          for (auto& [sequence, record] : live_) {
            if (sequence > last_sequence_) queue_.push_back(std::move(record));
          }
          live_.clear();
        } else {
          page_token_ = page->next_page_token;
        }
      }
      step = NextStep();
    }
    Take(step);
  }

  AuditLog& log_;
  Executor& executor_;
  const AuditServiceOptions& options_;
  prometheus::Counter& overflows_;
  const v1::AuditFilter filter_;

  absl::Mutex mu_;
  std::deque<v1::AuditRecord> queue_ ABSL_GUARDED_BY(mu_);  // To send; the front may be in flight.
  // New records that arrive while replaying, with their sequence numbers.
  std::deque<std::pair<uint64_t, v1::AuditRecord>> live_ ABSL_GUARDED_BY(mu_);
  bool replaying_ ABSL_GUARDED_BY(mu_) = false;
  bool fetching_ ABSL_GUARDED_BY(mu_) = false;  // A page read is queued or running.
  std::string page_token_ ABSL_GUARDED_BY(mu_);
  uint64_t last_sequence_ ABSL_GUARDED_BY(mu_) = 0;  // Highest sequence replayed.
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool sending_headers_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Decided to end; Finish once idle.
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

AuditServiceImpl::AuditServiceImpl(AuditLog& log, const Authorizer& authorizer, Executor& executor,
                                   prometheus::Registry& metrics, AuditServiceOptions options)
    : log_(log),
      authorizer_(authorizer),
      executor_(executor),
      options_(options),
      overflows_(prometheus::BuildCounter()
                     .Name("shuttle_controller_audit_follow_overflows_total")
                     .Help("Follow streams ended because the follower fell too far behind")
                     .Register(metrics)
                     .Add({})) {}

grpc::ServerUnaryReactor* AuditServiceImpl::Query(grpc::CallbackServerContext* ctx,
                                                  const v1::QueryAuditRequest* req,
                                                  v1::QueryAuditResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "AuditService.Query", resp,
                  [this, req](const Caller&) -> absl::StatusOr<v1::QueryAuditResponse> {
                    SHUTTLE_ASSIGN_OR_RETURN(
                        AuditPage page, log_.Query(req->filter(), req->limit(), req->page_token()));
                    v1::QueryAuditResponse out;
                    for (v1::AuditRecord& r : page.records) *out.add_records() = std::move(r);
                    out.set_next_page_token(std::move(page.next_page_token));
                    return out;
                  });
}

grpc::ServerWriteReactor<v1::AuditRecord>* AuditServiceImpl::Follow(
    grpc::CallbackServerContext* ctx, const v1::FollowAuditRequest* req) {
  return new FollowReactor(
      log_, executor_, options_, overflows_, req->filter(),
      authorizer_.Check(*ctx, Permission::kRead, "AuditService.Follow").status());
}

}  // namespace shuttle::controller
