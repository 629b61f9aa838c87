// The agent's end of the controller's policy stream (AgentService.PolicyStream, xDS-like):
// one thread that keeps a stream open, says Hello with the version enforced now, turns each
// Push into a bundle (full or delta), compiles it for this host, swaps it into the PolicyHolder,
// persists it as the last good snapshot and ACKs, or NACKs and keeps the previous version;
// sends heartbeats with the host's VMs; and reconnects with jittered exponential backoff.
//
// Protocol as the agent implements it (docs/operator-guide.md, "The agent and the controller"):
// - Every stream starts with exactly one Hello{host_id, current_version, vms, agent_version}.
//   current_version is the version enforced now (0 = none), so the controller can answer with
//   a delta when the agent is a few versions behind, or a full snapshot.
// - Each Push is answered with exactly one Ack{version = push.version, nonce} or
//   Nack{version = the version still enforced, nonce, error}, in order.
// - A delta whose base_version is not the version enforced now is NACKed (error says "a full
//   snapshot is needed"), and the agent then ends the stream (cancels it) and reconnects after
//   the first backoff step with a fresh Hello, to which the controller answers with a full
//   snapshot. It never sends a second Hello on one stream.
// - Heartbeat{vms} every heartbeat_interval; the controller's Heartbeats are read and ignored.
//   Dead peers are found by HTTP/2 keepalive (2 s ping, 2 s timeout), which needs the
//   controller to allow pings that often (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
//   <= 1000 and GRPC_ARG_HTTP2_MAX_PING_STRIKES = 0 on the server).
// - Backoff resets when the controller sends anything on a stream (a Push or a Heartbeat), so
//   a controller that refuses the agent right after Hello is not hammered.
#ifndef SHUTTLE_AGENT_CLIENT_POLICY_CLIENT_H_
#define SHUTTLE_AGENT_CLIENT_POLICY_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/client/backoff.h"
#include "agent/decide/policy_holder.h"
#include "common/clock.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent {

struct PolicyClientOptions {
  std::string controller_address;  // "HOST:PORT"
  std::string host_id;
  std::string agent_version = "dev";
  // mTLS from the agent's enrollment (tls::LoadClientCredentials); tests may pass insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Where the last good bundle is persisted (LastGoodPolicyPath); empty: not persisted.
  std::string snapshot_path;
  absl::Duration heartbeat_interval = absl::Seconds(5);
  absl::Duration keepalive_time = absl::Seconds(2);
  absl::Duration keepalive_timeout = absl::Seconds(2);
  BackoffOptions backoff;
  // Uniform [0, 1) for the backoff's jitter; empty: absl::BitGen.
  std::function<double()> random;
  // Measures how long a stream lived; null: RealClock().
  Clock* clock = nullptr;
};

// Lists the host's VMs for Hello and Heartbeat. Called on the client's threads; must be
// thread-safe.
using VmLister = std::function<std::vector<v1::VmInfo>()>;

// What the client has done so far (for logs, tests and `shuttlectl`-like status).
struct PolicyClientState {
  bool connected = false;  // A stream is open (Hello was sent).
  uint64_t version = 0;    // Version enforced now.
  uint64_t acks = 0;
  uint64_t nacks = 0;
  uint64_t sessions = 0;    // Streams opened (Hello sent).
  uint64_t reconnects = 0;  // Connection attempts after the first.
  std::string last_error;   // Why the last stream ended or the last push was NACKed.
};

// Thread-safe. `holder`, `registry` and whatever `vms` refers to must outlive the client.
class PolicyClient {
 public:
  PolicyClient(PolicyClientOptions options, PolicyHolder& holder, VmLister vms,
               prometheus::Registry& registry);
  // Stops (see Stop()).
  ~PolicyClient();
  PolicyClient(const PolicyClient&) = delete;
  PolicyClient& operator=(const PolicyClient&) = delete;

  // Before Start(): loads options.snapshot_path, compiles it for this host and enforces it
  // (PolicyHolder::Set), so the agent enforces its last good policy before any controller
  // answers; deltas then apply on top of it. Returns the version; NOT_FOUND if there is no
  // snapshot; other errors (unreadable, uncompilable) leave the holder untouched.
  absl::StatusOr<uint64_t> LoadPersisted();

  // Starts the stream thread. Call once.
  void Start();
  // Cancels the stream in flight and joins the thread; returns promptly (no wait for the
  // controller). Idempotent.
  void Stop();

  // The host's VMs changed (one was created or destroyed): a heartbeat with the new list goes
  // out now rather than at the next heartbeat_interval, so the controller pushes the rules for
  // a new VM (it compiles per host, for the VMs it was told of) within a round trip, not
  // seconds later; until then a new VM's crossings are decided by the defaults only. Returns at
  // once; nothing is sent while no stream is open (the next Hello lists the VMs anyway).
  void NotifyVmsChanged();

  PolicyClientState state() const;
  // Waits until `pred(state())` holds or `timeout` passes; returns whether it holds.
  bool WaitFor(const std::function<bool(const PolicyClientState&)>& pred,
               absl::Duration timeout) const;

 private:
  // What the reader does after answering one push.
  enum class AfterPush { kContinue, kResync };

  void Run();
  // One stream from connect to end. Returns why it ended.
  absl::Status RunSession(Backoff& backoff);
  AfterPush HandlePush(const v1::StreamResponse::Push& push, v1::StreamRequest& reply);
  bool Write(grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>& stream,
             const v1::StreamRequest& request);
  std::shared_ptr<grpc::Channel> NewChannel() const;

  const PolicyClientOptions options_;
  PolicyHolder& holder_;
  const VmLister vms_;
  Clock& clock_;

  prometheus::Gauge& version_gauge_;
  prometheus::Counter& acks_counter_;
  prometheus::Counter& nacks_counter_;
  prometheus::Gauge& connected_gauge_;
  prometheus::Counter& reconnects_counter_;

  // The bundle enforced now; only the stream thread touches it after Start().
  v1::PolicyBundle bundle_;

  // Serializes writes on the stream (reader thread: Ack/Nack; heartbeat thread: Heartbeat).
  absl::Mutex write_mu_;

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool session_done_ ABSL_GUARDED_BY(mu_) = false;
  // Set by NotifyVmsChanged(); the heartbeat thread sends at once and clears it.
  bool vms_changed_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // Stream in flight.
  PolicyClientState state_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_CLIENT_POLICY_CLIENT_H_
