// The broker: opens an allowed cross-VM channel from inside the target VM (or the host) and
// returns the open descriptor, which injection.h then hands to the intercepted caller, so that
// after the decision the data path is the kernel's and no process copies bytes.
//
// Objects (DESIGN.md section 1): unix sockets by path or abstract name (stream, seqpacket,
// datagram), TCP and UDP on a loopback address, POSIX message queues. The name to open is the
// one the policy chose, which a `redirect` may have changed from the one the caller used.
//
// Threads: all blocking work (a connect waits until the server accepts, up to the request's
// deadline) runs on the broker's own small pool of worker threads, the only threads of the agent
// that ever setns(): a worker enters the target's network or IPC namespace (setns on the VM
// init's pidfd), creates the socket or opens the queue (a socket keeps the network namespace it
// was created in; a queue descriptor keeps its IPC namespace's queue), and returns to the
// agent's namespaces before it takes the next job. Mount namespaces are never entered (a thread
// that shares its fs_struct could not): paths are resolved from the VM's root directory with
// openat2(RESOLVE_IN_ROOT). Completion is a callback on the worker thread, so the notification
// loop that asked never blocks.
#ifndef SHUTTLE_AGENT_BROKER_BROKER_H_
#define SHUTTLE_AGENT_BROKER_BROKER_H_

#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/broker/broker_target.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::broker {

// A unix socket bound to `path` in the target's file system. The path is resolved inside the
// target's root: `..` and absolute symlinks cannot leave it, and /proc magic links are refused.
struct UnixPathRequest {
  std::string path;        // Absolute, as seen inside the target.
  int type = SOCK_STREAM;  // SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM.
};

// A unix socket bound to an abstract name in the target's network namespace.
struct UnixAbstractRequest {
  std::string name;        // The raw name without its leading NUL (may contain NULs).
  int type = SOCK_STREAM;  // SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM.
};

// TCP connect (SOCK_STREAM) or UDP "connect" (SOCK_DGRAM: fixes the peer; nothing is sent) to a
// loopback address of the target's network namespace (127.0.0.0/8, ::1, ::ffff:127.x.y.z, or
// the "any" address 0.0.0.0 / ::, which Linux connects locally, as the decoder counts it).
struct InetRequest {
  sockaddr_storage address = {};  // AF_INET or AF_INET6, with the port.
  int type = SOCK_STREAM;
  // Builds a request for `ip` ("127.0.0.1", "::1") and `port`; INVALID_ARGUMENT if `ip` is not
  // an IP address literal.
  static absl::StatusOr<InetRequest> Make(const std::string& ip, uint16_t port, int type);
};

// A POSIX message queue in the target's IPC namespace, opened as the caller asked: the broker
// never adds O_CREAT, so a queue is created only when the caller itself asked for it.
struct MqRequest {
  std::string name;      // "/name": one slash, then 1..255 bytes without '/'.
  int flags = O_RDONLY;  // O_RDONLY/O_WRONLY/O_RDWR, optionally O_CREAT, O_EXCL, O_NONBLOCK.
  mode_t mode = 0600;    // With O_CREAT.
  // With O_CREAT: mq_maxmsg and mq_msgsize (nullopt: the IPC namespace's defaults).
  std::optional<mq_attr> attr = std::nullopt;
};

using BrokerRequest = std::variant<UnixPathRequest, UnixAbstractRequest, InetRequest, MqRequest>;

// Identity under which an object is opened: the caller's, so that file and queue permissions
// are checked as they would be for the caller, a created queue belongs to the caller, and a unix
// server reading SO_PEERCRED sees the caller's uid and gid (not the agent's root). Only the
// worker thread's effective and file-system ids and groups change, for the duration of one job.
struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // Supplementary groups (at most 256 are kept).
};

struct OpenOptions {
  // When the open must have finished; a connect still waiting then fails with
  // DEADLINE_EXCEEDED. Also bounds the time a job waits in the queue.
  absl::Time deadline = absl::InfiniteFuture();
  // nullopt: open as the agent (root). Wiring code should pass the caller's (injection.h:
  // ReadCallerCredentials).
  std::optional<Credentials> as;
};

// What Broker::ConnectNow did.
enum class ConnectNowResult {
  kConnected,   // The socket is connected.
  kWouldBlock,  // A non-blocking socket and a full backlog: the caller gets EAGAIN, as natively.
  kUseOpen,     // Not possible without waiting (a blocking socket and a full backlog, a path not
                // in the cache), or failed: use Open().
};

// Counters; relaxed atomics, read at any time.
struct BrokerStats {
  std::atomic<uint64_t> brokered{0};          // Objects opened.
  std::atomic<uint64_t> failed_invalid{0};    // Bad request (name, type, address).
  std::atomic<uint64_t> failed_not_found{0};  // No such path or queue.
  std::atomic<uint64_t> failed_refused{0};    // Nothing listening (ECONNREFUSED).
  std::atomic<uint64_t> failed_denied{0};     // Permissions, or a path that would leave the root.
  std::atomic<uint64_t> failed_deadline{0};   // Deadline passed (in the queue or connecting).
  std::atomic<uint64_t> failed_vm_gone{0};    // The target VM's init has exited.
  std::atomic<uint64_t> failed_overload{0};   // Queue full: refused without trying.
  std::atomic<uint64_t> failed_other{0};
};

class Broker {
 public:
  struct Options {
    int threads = 4;           // Worker threads (at least 1).
    size_t max_queued = 1024;  // Jobs waiting beyond this are failed with RESOURCE_EXHAUSTED.
  };
  // Receives the opened descriptor (O_CLOEXEC, blocking mode, no socket timeouts, owned by the
  // callee) or the error, which names the target, the object and the errno (ErrnoForStatus()
  // gives the errno).
  using Callback = absl::AnyInvocable<void(absl::StatusOr<UniqueFd>) &&>;

  // Starts the workers. Must be called on a thread that is in the agent's own (host) network
  // and IPC namespaces, which the workers return to after each job. Fails if those can't be
  // opened or `options` are invalid.
  static absl::StatusOr<std::unique_ptr<Broker>> Create(const Options& options);

  // Runs every job still queued, then joins the workers (their callbacks included).
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Opens `request` in `target` on a worker and calls `done` there with the result. Never
  // blocks; `done` is called exactly once (at once, on this thread, when the request is invalid
  // or the queue is full).
  // Thread-safe. `done` must not block for long: it holds a worker.
  void Open(BrokerTargetPtr target, BrokerRequest request, OpenOptions options, Callback done);

  // Connects `socket_fd` (a duplicate of the caller's own socket, see injection.h's
  // DuplicateCallerFd) to the unix socket at `path` in `target`, on the calling thread, if that
  // needs no waiting at all: the path is in the kernel's cache and the server's backlog has room
  // (the common case, and the one whose latency applications notice). The caller's socket itself is
  // connected, so everything set on it before (options, a bound name) stays. Safe on the
  // notification loop: no blocking syscall, no namespace change; the thread runs as
  // options.as for a few syscalls when that differs from the agent's identity. kUseOpen for
  // anything but success or a non-blocking caller's EAGAIN (not cached, nothing there, no
  // permission): Open() then opens a new socket on a worker and names the error.
  // Thread-safe.
  // The socket's family and type are the kernel's to check: a connect() of a socket that is no
  // unix socket (or of a type the server's is not) fails, and the caller takes Open()'s way,
  // which inspects the socket and names the problem.
  ConnectNowResult ConnectNow(const BrokerTarget& target, const std::string& path,
                              const OpenOptions& options, int socket_fd);

  // Open() and wait for the result. For tools and tests; never call it on the notification loop.
  absl::StatusOr<UniqueFd> OpenAndWait(BrokerTargetPtr target, BrokerRequest request,
                                       OpenOptions options);

  const BrokerStats& stats() const { return stats_; }

 private:
  struct Job {
    BrokerTargetPtr target;
    BrokerRequest request;
    OpenOptions options;
    Callback done;
  };

  Broker(const Options& options, UniqueFd home_net, UniqueFd home_ipc, Credentials own);
  void Work();
  absl::StatusOr<UniqueFd> RunJob(const Job& job);
  void Count(const absl::Status& status);

  const Options options_;
  // The agent's own namespaces, which a worker returns to after each job.
  const UniqueFd home_net_;
  const UniqueFd home_ipc_;
  // The agent's own effective ids and groups, which a worker returns to after each job.
  const Credentials own_;
  BrokerStats stats_;

  absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

// A short description of `request` for errors and logs, e.g. "unix stream /run/app.sock",
// "unix dgram @name", "tcp 127.0.0.1:5432", "mq /jobs".
std::string DescribeRequest(const BrokerRequest& request);

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_BROKER_H_
