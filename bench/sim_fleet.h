// N simulated agents in one process, each with its own enrolled certificate and its own mTLS
// channel, each holding one AgentService.PolicyStream open with gRPC's callback API (so 1,000
// streams need no thread each). They speak the agent's side of the protocol
// (agent/client/policy_client.h): Hello first, one ACK (or NACK) per push echoing its nonce,
// Heartbeat{vms} every heartbeat interval, and they record when each push arrived and when the
// ACK for it was handed to gRPC, which is what the convergence benchmark reports.
//
// What an agent does with a push (SimAgentWork): kAck checks what the controller path must get
// right (nonce, version, a delta's base version against the version last ACKed) and ACKs, so the
// measured time is the controller's; kCompile also assembles the bundle (BundleFromPush) and
// compiles it for the host like the real agent (but does not persist it to disk).
#ifndef SHUTTLE_BENCH_SIM_FLEET_H_
#define SHUTTLE_BENCH_SIM_FLEET_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace shuttle::bench {

using SteadyTime = std::chrono::steady_clock::time_point;

// An enrolled agent's identity: what AgentService.Enroll gave it.
struct AgentIdentity {
  std::string host_id;
  std::string key_pem;
  std::string cert_pem;
};

enum class SimAgentWork { kAck, kCompile };

struct SimFleetOptions {
  std::string address;           // Controller "HOST:PORT".
  std::string ca_pem;            // The controller's CA (EnrollResponse.ca_pem).
  std::vector<std::string> vms;  // VM names every agent reports (Hello, Heartbeat).
  absl::Duration heartbeat_interval = absl::Seconds(5);
  // HTTP/2 keepalive as the real agent sets it (2 s / 2 s); zero turns it off.
  absl::Duration keepalive_time = absl::Seconds(2);
  SimAgentWork work = SimAgentWork::kAck;
};

// gRPC channel arguments the real agent uses for its policy stream (keepalive, a subchannel of
// its own), so N channels are N TCP connections with N TLS sessions.
grpc::ChannelArguments AgentChannelArgs(absl::Duration keepalive_time);

// Channel credentials for `identity` trusting only `ca_pem`.
std::shared_ptr<grpc::ChannelCredentials> AgentCredentials(const AgentIdentity& identity,
                                                           const std::string& ca_pem);

// When one agent got the push of a version and when its ACK left.
struct AckTiming {
  SteadyTime received;  // The push's message was read.
  SteadyTime acked;     // The ACK write completed (handed to the transport).
};

// What the fleet's agents did so far.
struct SimFleetCounters {
  uint64_t pushes_full = 0;
  uint64_t pushes_delta = 0;
  uint64_t push_bytes = 0;
  uint64_t acks = 0;
  uint64_t nacks = 0;  // Pushes refused: a protocol error or (kCompile) a bundle that failed.
  uint64_t streams_ended = 0;  // Streams that ended before Stop().
  std::string first_error;     // The first NACK reason or unexpected stream end.
};

class SimAgent;

// Thread-safe. Owns its agents and their channels.
class SimFleet {
 public:
  SimFleet(SimFleetOptions options, std::vector<AgentIdentity> agents);
  // Stop().
  ~SimFleet();
  SimFleet(const SimFleet&) = delete;
  SimFleet& operator=(const SimFleet&) = delete;

  // Opens every agent's stream (Hello with version 0) and starts the heartbeat thread. Once.
  void Start();

  // Waits until every agent has sent an ACK for `version` or newer. DEADLINE_EXCEEDED saying how
  // many did after `timeout`; ABORTED at once when a stream ended or an agent NACKed.
  absl::Status WaitAllAcked(uint64_t version, absl::Duration timeout);

  // Per agent (in the order given to the constructor): the timing of its first ACK of
  // `version` or newer; nullopt for an agent that has not sent one.
  std::vector<std::optional<AckTiming>> Timings(uint64_t version) const;

  SimFleetCounters counters() const;
  size_t size() const { return host_ids_.size(); }

  // Cancels every stream and waits (bounded, 10 s) for gRPC to finish them. Idempotent.
  // DEADLINE_EXCEEDED if some did not finish: gRPC may then still call into the fleet, so the
  // caller must not destroy it (leak it; the process is ending).
  absl::Status Stop();

  // Called by the agents (gRPC threads).
  void OnPush(bool delta, size_t bytes);
  void OnAckSent(size_t agent, uint64_t version, SteadyTime received, SteadyTime acked);
  void OnNack(size_t agent, const std::string& error);
  void OnStreamDone(size_t agent, const grpc::Status& status);

 private:
  void HeartbeatLoop();
  bool FailedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SimFleetOptions options_;
  std::vector<std::unique_ptr<SimAgent>> agents_;  // Set up once; Stop() may let go of them.
  std::vector<std::string> host_ids_;              // Immutable.

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t done_ ABSL_GUARDED_BY(mu_) = 0;  // Streams whose OnDone ran.
  SimFleetCounters counters_ ABSL_GUARDED_BY(mu_);
  // Per agent: the version last ACKed, and every ACK's (version, timing), oldest first.
  std::vector<std::optional<uint64_t>> acked_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::pair<uint64_t, AckTiming>>> history_ ABSL_GUARDED_BY(mu_);
  // How many agents last ACKed each version (sums to the agents that ACKed anything).
  std::map<uint64_t, size_t> at_version_ ABSL_GUARDED_BY(mu_);
  std::thread heartbeat_;
};

}  // namespace shuttle::bench

#endif  // SHUTTLE_BENCH_SIM_FLEET_H_
