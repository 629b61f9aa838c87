// A server process that a benchmark starts and always stops: the real shuttle-controller, or the
// echo server. Waits for the files a server writes once it serves (its --port-file) with inotify
// and a pidfd, so start-up is bounded and a child that dies early is noticed at once; never
// sleeps to wait. The child gets SIGKILL if the benchmark dies first (PR_SET_PDEATHSIG), so no
// run leaves a server behind, whatever happens to the benchmark.
#ifndef SHUTTLE_BENCH_CHILD_PROCESS_H_
#define SHUTTLE_BENCH_CHILD_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shuttle::bench {

// One child process. Thread-compatible: one thread drives it (the destructor included).
class ChildProcess {
 public:
  // Starts argv[0] (a path) with `argv`, stdout and stderr appended to `log_path`, and an
  // unblocked signal mask. INVALID_ARGUMENT for an empty argv; INTERNAL naming the program if
  // fork/exec setup fails (an exec failure shows as exit status 127 and a line in the log).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             const std::string& log_path);
  // Stops the child (Stop with a 10 s grace) if it still runs.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }

  // Waits until `path` exists (created or renamed into place), the child exits (FAILED_PRECONDITION
  // with its exit status and the last lines of its log), or `timeout` passes (DEADLINE_EXCEEDED).
  absl::Status WaitForFile(const std::string& path, absl::Duration timeout);

  // True once the child has exited (reaps it if it has).
  bool Exited() { return Reap(false); }

  // SIGTERM, then SIGKILL if the child is still running after `grace`. Returns the exit status
  // (0..255) or 128 + the signal that ended it; DEADLINE_EXCEEDED if it had to be killed.
  // Idempotent: later calls return the exit status.
  absl::StatusOr<int> Stop(absl::Duration grace);

  // The last `lines` lines of the child's log (for error messages).
  std::string LogTail(int lines) const;

 private:
  ChildProcess(pid_t pid, int pidfd, std::string name, std::string log_path)
      : pid_(pid), pidfd_(pidfd), name_(std::move(name)), log_path_(std::move(log_path)) {}
  // Reaps the child if it has exited; true once reaped.
  bool Reap(bool block);

  pid_t pid_;
  int pidfd_;  // Readable once the child has exited.
  std::string name_;
  std::string log_path_;
  bool reaped_ = false;
  int exit_code_ = 0;
};

// Reads a port file ("key=PORT" lines, e.g. "grpc=41233\nmetrics=40111\n") into key -> port.
// INVALID_ARGUMENT naming the file and line for anything else.
absl::StatusOr<std::map<std::string, int>> ReadPortFile(const std::string& path);

}  // namespace shuttle::bench

#endif  // SHUTTLE_BENCH_CHILD_PROCESS_H_
