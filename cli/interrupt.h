// Ends a streaming call cleanly when the user presses Ctrl-C: while a CancelOnInterrupt lives,
// SIGINT and SIGTERM cancel the given gRPC call instead of killing shuttlectl, so a command like
// `audit --follow` can flush its output and exit 0. The signal handler only writes a byte to a
// pipe (async-signal-safe); a watcher thread reads it and cancels the call.
#ifndef SHUTTLE_CLI_INTERRUPT_H_
#define SHUTTLE_CLI_INTERRUPT_H_

#include <signal.h>

#include <atomic>
#include <thread>

#include <grpcpp/client_context.h>

namespace shuttle::cli {

class CancelOnInterrupt {
 public:
  // Installs the handlers; `context` (borrowed) must outlive this. May be created before the
  // call starts (a cancel then takes effect when it does). At most one instance at a time per
  // process; not thread-safe to create or destroy concurrently.
  explicit CancelOnInterrupt(grpc::ClientContext* context);
  // Restores the previous handlers and stops the watcher.
  ~CancelOnInterrupt();
  CancelOnInterrupt(const CancelOnInterrupt&) = delete;
  CancelOnInterrupt& operator=(const CancelOnInterrupt&) = delete;

  // True once a signal cancelled the call. Thread-safe.
  bool interrupted() const { return interrupted_.load(); }

 private:
  void Watch(grpc::ClientContext* context);

  int pipe_[2] = {-1, -1};
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
  std::atomic<bool> interrupted_{false};
  std::thread watcher_;
};

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_INTERRUPT_H_
