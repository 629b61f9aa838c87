// The controller's side of the xDS-like policy stream (DESIGN.md section 2, "Push"): one session
// per connected agent, per-host bundles, full or delta pushes with a nonce, ACK/NACK bookkeeping,
// heartbeats, dead-peer detection, and the host table FleetService shows. gRPC-free: a stream is
// a PushSink, so the manager is tested without a server, and the reactor stays thin.
//
// Push semantics (docs/architecture.md, "Policy push"):
// - One outstanding push per session. A snapshot that arrives while a push awaits its ACK/NACK is
//   not sent at once; after the ACK/NACK the session gets the newest version (intermediate
//   versions are skipped, never queued).
// - A session's first push (after Hello) is a full snapshot, unless the agent reports the very
//   version it last ACKed to this controller, whose per-host content the manager still holds:
//   then a delta against it. Later pushes are deltas against the last ACKed content when small
//   (DeltaIfSmall), full snapshots otherwise.
// - A NACK leaves the acked version as it was; the same version is not pushed again; the next
//   fleet version (or VM change) is.
// - A change of the host's VMs (Hello, Heartbeat) that changes its bundle is pushed with the
//   current fleet version again (an agent must accept a push of the version it already runs).
#ifndef SHUTTLE_CONTROLLER_PUSH_PUSH_MANAGER_H_
#define SHUTTLE_CONTROLLER_PUSH_PUSH_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/executor.h"
#include "controller/push/host_bundle.h"
#include "controller/registry/policy_registry.h"
#include "controller/store/store.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/fleet.pb.h"

namespace shuttle::controller {

// One agent's stream, as the manager sees it. Implemented by the gRPC reactor.
class PushSink {
 public:
  virtual ~PushSink() = default;
  // Queues a message for the agent. Must not block and must not call back into the manager
  // (it is called with the manager's lock held).
  virtual void Send(const v1::StreamResponse& message) = 0;
  // Ends the stream with `status` (the reactor then calls PushManager::Disconnect). Same rules.
  virtual void Close(const absl::Status& status) = 0;
};

struct PushOptions {
  // The controller sends StreamResponse.Heartbeat this often, and checks for silent agents.
  absl::Duration heartbeat_interval = absl::Seconds(5);
  // A session with no agent message for this long is closed (UNAVAILABLE) and the host marked
  // disconnected. Agents send StreamRequest.Heartbeat every heartbeat_interval.
  absl::Duration dead_after = absl::Seconds(15);
  // Most policies a delta may change; more and the push is a full snapshot.
  size_t max_delta_policies = 16;
  // Start the heartbeat thread (tests that drive Tick() themselves turn it off).
  bool heartbeat_thread = true;
};

// Thread-safe. Collaborators are borrowed and must outlive the manager.
class PushManager {
 public:
  // Metrics: shuttle_controller_agents_connected, _push_ack_seconds, _pushes_total{type},
  // _nacks_total.
  PushManager(Store& store, PolicyRegistry& registry, Clock& clock, prometheus::Registry& metrics,
              PushOptions options = {});
  // Closes every session (UNAVAILABLE), stops the threads, waits for queued store writes.
  ~PushManager();
  PushManager(const PushManager&) = delete;
  PushManager& operator=(const PushManager&) = delete;

  // Loads the host table from the store and subscribes to the registry. Call once, before
  // serving.
  absl::Status Start();

  // Closes every session (UNAVAILABLE "controller stopping") and pushes nothing more; call before
  // shutting the server down so open streams end at once instead of at the shutdown deadline.
  // Idempotent; the destructor calls it too.
  void Stop();

  // Records an enrolled host (the store already has it).
  void OnEnrolled(const HostRecord& record);

  // A Hello from an authenticated agent whose certificate names hello.host_id(). Registers the
  // session (replacing, and closing with ABORTED, an older session of the same host) and queues
  // its first push. Returns the session id for the calls below (0, with the sink closed, once
  // stopping). `sink` must stay valid until Disconnect(id) returns, or until the manager is
  // destroyed if it never is.
  uint64_t Connect(const v1::StreamRequest::Hello& hello, PushSink* sink);
  // Agent messages after Hello. Never block: the work runs on the manager's worker thread.
  void OnAck(uint64_t session, const v1::StreamRequest::Ack& ack);
  void OnNack(uint64_t session, const v1::StreamRequest::Nack& nack);
  void OnHeartbeat(uint64_t session, const v1::StreamRequest::Heartbeat& heartbeat);
  // The stream ended. After this returns the manager never touches the session's sink. A stale
  // or unknown id is ignored.
  void Disconnect(uint64_t session);

  // Sends heartbeats and closes silent sessions; the heartbeat thread calls it every
  // heartbeat_interval.
  void Tick();

  // What FleetService shows. NOT_FOUND for an unknown host.
  std::vector<v1::HostStatus> ListHosts() const;
  absl::StatusOr<v1::HostStatus> GetHost(const std::string& host_id) const;

 private:
  struct Inflight {
    uint64_t version = 0;
    std::string nonce;
    std::shared_ptr<const v1::PolicyBundle> bundle;
    bool is_delta = false;
    absl::Time sent;
  };
  struct Session {
    uint64_t id = 0;
    std::string host_id;
    PushSink* sink = nullptr;
    std::optional<Inflight> inflight;
    // Content and version the agent enforces, as far as this session knows; null before the
    // first ACK on this session unless carried over (see the header comment).
    std::shared_ptr<const v1::PolicyBundle> acked_bundle;
    // The newest (version, VM set) that was pushed or decided not to need a push.
    uint64_t pushed_version = 0;
    bool needs_push = true;
  };
  struct HostState {
    HostRecord record;
    uint64_t session = 0;  // 0 = not connected.
    // Last ACKed per-host content (kept across streams, not across restarts).
    std::shared_ptr<const v1::PolicyBundle> acked_bundle;
    absl::Time last_saved = absl::InfinitePast();  // When SaveHost last queued a write.
  };

  // A delta between two shared host bundles (nullopt: send a full snapshot), kept with both so
  // the pointers that key it stay valid.
  struct CachedDelta {
    std::shared_ptr<const v1::PolicyBundle> base;
    std::shared_ptr<const v1::PolicyBundle> target;
    std::optional<push::BundleDelta> delta;
  };

  void OnSnapshot(std::shared_ptr<const FleetSnapshot> snapshot);
  // Sends the newest bundle to `s` unless a push is outstanding or nothing changed.
  void MaybePush(Session& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The current snapshot's bundle for `host`, shared by every host with the same
  // push::HostBundleKey.
  std::shared_ptr<const v1::PolicyBundle> BundleFor(const std::string& host_id,
                                                    const HostState& host)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // push::DeltaIfSmall(*base, *target), computed once per pair of shared bundles.
  const std::optional<push::BundleDelta>& DeltaFor(
      const std::shared_ptr<const v1::PolicyBundle>& base,
      const std::shared_ptr<const v1::PolicyBundle>& target) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes every host record queued by SaveHost (the newest of each host), until none is left.
  // Runs on store_writer_.
  void DrainSaves();
  // Marks the host seen now (agent message). Writes it to the store only every
  // kLastSeenWriteInterval (heartbeats alone must not fsync per message); state changes call
  // SaveHost.
  void Touch(HostState& host) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveHost(HostState& host) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::HostStatus StatusOf(const HostState& host) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> VmNames(const HostState& host) const;
  void HandleAck(uint64_t session, const v1::StreamRequest::Ack& ack);
  void HandleNack(uint64_t session, const v1::StreamRequest::Nack& nack);
  void HeartbeatLoop();

  Store& store_;
  PolicyRegistry& registry_;
  Clock& clock_;
  const PushOptions options_;
  prometheus::Gauge& connected_;
  prometheus::Histogram& ack_seconds_;
  prometheus::Counter& pushes_full_;
  prometheus::Counter& pushes_delta_;
  prometheus::Counter& nacks_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const FleetSnapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  // Per-host bundles of snapshot_ by push::HostBundleKey, and the deltas between shared
  // bundles: a fleet of hosts alike costs one bundle and one delta per change, not one per host.
  // Both are emptied when snapshot_ changes.
  std::map<std::string, std::shared_ptr<const v1::PolicyBundle>> bundles_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<const v1::PolicyBundle*, const v1::PolicyBundle*>, CachedDelta> deltas_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, HostState> hosts_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  // The push in flight of sessions that ended, until the worker has handled whatever their
  // stream delivered before it ended: an ACK sent just before a disconnect still counts.
  struct EndedSession {
    std::string host_id;
    Inflight inflight;
  };
  std::map<uint64_t, EndedSession> ended_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // The registry's subscription reaches the manager through this, so a snapshot published after
  // the manager is gone is dropped instead of calling a destroyed object.
  struct Link {
    absl::Mutex mu;
    PushManager* manager ABSL_GUARDED_BY(mu) = nullptr;
  };
  std::shared_ptr<Link> link_ = std::make_shared<Link>();

  std::thread heartbeat_;
  // Host records waiting for the store, the newest per host: when the store is slower than the
  // agents' ACKs (each write is an fsync), saves of one host collapse into one write instead of
  // queueing without bound. Lock order: mu_, then save_mu_.
  absl::Mutex save_mu_;
  std::map<std::string, HostRecord> unsaved_ ABSL_GUARDED_BY(save_mu_);
  bool drain_queued_ ABSL_GUARDED_BY(save_mu_) = false;  // A DrainSaves is queued or running.
  // Store writes, off the push path. Destroyed before the above: drains them first.
  Executor store_writer_{1};
  // Pushes and agent messages, in arrival order. Declared last: drained and joined first.
  Executor worker_{1};
};

// A random nonce: 16 bytes from the OS CSPRNG, hex.
std::string NewNonce();

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_PUSH_PUSH_MANAGER_H_
