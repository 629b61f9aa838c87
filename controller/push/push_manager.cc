#include "controller/push/push_manager.h"

#include <openssl/rand.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "controller/push/host_bundle.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

const std::vector<double>& AckBuckets() {
  static const std::vector<double> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,  0.5,    1,     2.5,  5,     10,   30};
  return kBuckets;
}

}  // namespace

std::string NewNonce() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    // The CSPRNG failing is a broken invariant of the process, not an input error.
    SHUTTLE_LOG(ERROR) << "RAND_bytes failed";
    std::abort();
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

PushManager::PushManager(Store& store, PolicyRegistry& registry, Clock& clock,
                         prometheus::Registry& metrics, PushOptions options)
    : store_(store),
      registry_(registry),
      clock_(clock),
      options_(options),
      connected_(prometheus::BuildGauge()
                     .Name("shuttle_controller_agents_connected")
                     .Help("Agents with an open policy stream")
                     .Register(metrics)
                     .Add({})),
      ack_seconds_(prometheus::BuildHistogram()
                       .Name("shuttle_controller_push_ack_seconds")
                       .Help("Time from sending a policy push to its ACK (convergence)")
                       .Register(metrics)
                       .Add({}, AckBuckets())),
      pushes_full_(prometheus::BuildCounter()
                       .Name("shuttle_controller_pushes_total")
                       .Help("Policy pushes sent, by type (full snapshot or delta)")
                       .Register(metrics)
                       .Add({{"type", "full"}})),
      pushes_delta_(prometheus::BuildCounter()
                        .Name("shuttle_controller_pushes_total")
                        .Help("Policy pushes sent, by type (full snapshot or delta)")
                        .Register(metrics)
                        .Add({{"type", "delta"}})),
      nacks_(prometheus::BuildCounter()
                 .Name("shuttle_controller_nacks_total")
                 .Help("Policy pushes an agent refused (NACK)")
                 .Register(metrics)
                 .Add({})) {}

PushManager::~PushManager() {
  {
    absl::MutexLock lock(&link_->mu);
    link_->manager = nullptr;
  }
  Stop();
}

void PushManager::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, s] : sessions_) s.sink->Close(absl::UnavailableError("controller stopping"));
  }
  if (heartbeat_.joinable()) heartbeat_.join();
}

absl::Status PushManager::Start() {
  absl::StatusOr<std::vector<HostRecord>> hosts = store_.ListHosts();
  if (!hosts.ok()) return hosts.status();
  {
    absl::MutexLock lock(&mu_);
    for (HostRecord& h : *hosts) {
      std::string id = h.host_id;
      hosts_[id].record = std::move(h);
    }
    snapshot_ = registry_.Snapshot();
  }
  {
    absl::MutexLock lock(&link_->mu);
    link_->manager = this;
  }
  registry_.Subscribe([link = link_](std::shared_ptr<const FleetSnapshot> snapshot) {
    absl::MutexLock lock(&link->mu);
    if (link->manager != nullptr) link->manager->OnSnapshot(std::move(snapshot));
  });
  if (options_.heartbeat_thread) heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  return absl::OkStatus();
}

void PushManager::OnEnrolled(const HostRecord& record) {
  absl::MutexLock lock(&mu_);
  HostState& host = hosts_[record.host_id];
  host.record = record;
}

void PushManager::OnSnapshot(std::shared_ptr<const FleetSnapshot> snapshot) {
  worker_.Run([this, snapshot = std::move(snapshot)] {
    absl::MutexLock lock(&mu_);
    if (snapshot_ != nullptr && snapshot->bundle.version() <= snapshot_->bundle.version()) return;
    snapshot_ = snapshot;
    bundles_.clear();
    deltas_.clear();
    for (auto& [id, s] : sessions_) {
      s.needs_push = true;
      MaybePush(s);
    }
  });
}

std::vector<std::string> PushManager::VmNames(const HostState& host) const {
  std::vector<std::string> names;
  names.reserve(host.record.vms.size());
  for (const v1::VmInfo& vm : host.record.vms) names.push_back(vm.name());
  return names;
}

// Most shared bundles (and deltas) kept per fleet version before the caches start over.
constexpr size_t kMaxCachedBundles = 4096;

std::shared_ptr<const v1::PolicyBundle> PushManager::BundleFor(const std::string& host_id,
                                                               const HostState& host) {
  const std::vector<std::string> vms = VmNames(host);
  // Hosts alike share entries; only agents that keep reporting new VM sets add more. Bound it.
  if (bundles_.size() >= kMaxCachedBundles) bundles_.clear();
  std::shared_ptr<const v1::PolicyBundle>& bundle =
      bundles_[push::HostBundleKey(snapshot_->bundle, host_id, vms)];
  if (bundle == nullptr) {
    bundle =
        std::make_shared<const v1::PolicyBundle>(push::HostBundle(snapshot_->bundle, host_id, vms));
  }
  return bundle;
}

const std::optional<push::BundleDelta>& PushManager::DeltaFor(
    const std::shared_ptr<const v1::PolicyBundle>& base,
    const std::shared_ptr<const v1::PolicyBundle>& target) {
  if (deltas_.size() >= kMaxCachedBundles) deltas_.clear();
  auto [it, added] = deltas_.try_emplace({base.get(), target.get()});
  if (added) {
    it->second.base = base;
    it->second.target = target;
    it->second.delta = push::DeltaIfSmall(*base, *target, options_.max_delta_policies);
  }
  return it->second.delta;
}

void PushManager::MaybePush(Session& s) {
  if (stopping_ || s.inflight.has_value() || !s.needs_push || snapshot_ == nullptr) return;
  s.needs_push = false;
  std::shared_ptr<const v1::PolicyBundle> bundle = BundleFor(s.host_id, hosts_[s.host_id]);
  const std::optional<push::BundleDelta>* delta = nullptr;
  if (s.acked_bundle != nullptr) {
    // Same content (a VM change that changes nothing for this host): nothing to send.
    if (s.acked_bundle == bundle) return;
    delta = &DeltaFor(s.acked_bundle, bundle);
    if (s.acked_bundle->version() == bundle->version() && delta->has_value() &&
        (*delta)->size() == 0) {
      return;
    }
  }
  v1::StreamResponse response;
  v1::StreamResponse::Push& push = *response.mutable_push();
  push.set_version(bundle->version());
  push.set_nonce(NewNonce());
  const bool is_delta = delta != nullptr && delta->has_value();
  if (is_delta) {
    push.set_is_delta(true);
    push.set_base_version(s.acked_bundle->version());
    for (const v1::Policy& p : (*delta)->upserts) *push.add_upserts() = p;
    for (const std::string& name : (*delta)->removals) push.add_removals(name);
    pushes_delta_.Increment();
  } else {
    *push.mutable_snapshot() = *bundle;
    pushes_full_.Increment();
  }
  s.inflight = Inflight{bundle->version(), push.nonce(), bundle, is_delta, clock_.Now()};
  s.pushed_version = bundle->version();
  s.sink->Send(response);
}

constexpr absl::Duration kLastSeenWriteInterval = absl::Seconds(30);

void PushManager::Touch(HostState& host) {
  host.record.last_seen = clock_.Now();
  if (host.record.last_seen - host.last_saved >= kLastSeenWriteInterval) SaveHost(host);
}

void PushManager::SaveHost(HostState& host) {
  host.last_saved = clock_.Now();
  bool queue = false;
  {
    absl::MutexLock lock(&save_mu_);
    unsaved_[host.record.host_id] = host.record;
    queue = !drain_queued_;
    drain_queued_ = true;
  }
  if (queue) store_writer_.Run([this] { DrainSaves(); });
}

void PushManager::DrainSaves() {
  while (true) {
    std::map<std::string, HostRecord> batch;
    {
      absl::MutexLock lock(&save_mu_);
      if (unsaved_.empty()) {
        drain_queued_ = false;
        return;
      }
      batch.swap(unsaved_);
    }
    for (const auto& [id, record] : batch) {
      absl::Status status = store_.PutHost(record);
      if (!status.ok()) {
        SHUTTLE_LOG(WARNING) << "host " << id << ": " << status;
      }
    }
  }
}

uint64_t PushManager::Connect(const v1::StreamRequest::Hello& hello, PushSink* sink) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    sink->Close(absl::UnavailableError("controller stopping"));
    return 0;
  }
  const uint64_t id = next_session_++;
  HostState& host = hosts_[hello.host_id()];
  if (host.record.host_id.empty()) {
    // Enrolled before this controller kept hosts, or its row was lost: start one.
    host.record.host_id = hello.host_id();
    host.record.first_seen = clock_.Now();
  }
  if (host.session != 0) {
    auto old = sessions_.find(host.session);
    if (old != sessions_.end()) {
      old->second.sink->Close(
          absl::AbortedError("replaced by a newer policy stream from the same host"));
      sessions_.erase(old);
      connected_.Decrement();
    }
  }
  host.session = id;
  host.record.vms.assign(hello.vms().begin(), hello.vms().end());
  host.record.last_seen = clock_.Now();
  SaveHost(host);
  Session& s = sessions_[id];
  s.id = id;
  s.host_id = hello.host_id();
  s.sink = sink;
  // Deltas need the exact content the agent holds: only the content it ACKed to us qualifies.
  if (host.acked_bundle != nullptr && hello.current_version() != 0 &&
      host.acked_bundle->version() == hello.current_version()) {
    s.acked_bundle = host.acked_bundle;
  }
  connected_.Increment();
  worker_.Run([this, id] {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) MaybePush(it->second);
  });
  return id;
}

void PushManager::OnAck(uint64_t session, const v1::StreamRequest::Ack& ack) {
  worker_.Run([this, session, ack] { HandleAck(session, ack); });
}

void PushManager::OnNack(uint64_t session, const v1::StreamRequest::Nack& nack) {
  worker_.Run([this, session, nack] { HandleNack(session, nack); });
}

void PushManager::HandleAck(uint64_t session, const v1::StreamRequest::Ack& ack) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) {
    // The stream ended after sending this ACK: the agent runs that version now.
    auto ended = ended_.find(session);
    if (ended == ended_.end() || ended->second.inflight.nonce != ack.nonce() ||
        ended->second.inflight.version != ack.version()) {
      return;
    }
    HostState& host = hosts_[ended->second.host_id];
    ack_seconds_.Observe(absl::ToDoubleSeconds(clock_.Now() - ended->second.inflight.sent));
    host.acked_bundle = ended->second.inflight.bundle;
    host.record.acked_version = ended->second.inflight.version;
    ended_.erase(ended);
    SaveHost(host);
    return;
  }
  Session& s = it->second;
  HostState& host = hosts_[s.host_id];
  if (!s.inflight.has_value() || s.inflight->nonce != ack.nonce()) {
    SHUTTLE_LOG(WARNING) << "host " << s.host_id << ": ACK with unknown nonce '" << ack.nonce()
                         << "' ignored";
    Touch(host);
    return;
  }
  if (ack.version() != s.inflight->version) {
    s.sink->Close(absl::InvalidArgumentError(
        absl::StrCat("ACK for nonce ", ack.nonce(), " names version ", ack.version(),
                     " but that push carried version ", s.inflight->version)));
    return;
  }
  ack_seconds_.Observe(absl::ToDoubleSeconds(clock_.Now() - s.inflight->sent));
  s.acked_bundle = s.inflight->bundle;
  host.acked_bundle = s.inflight->bundle;
  host.record.acked_version = s.inflight->version;
  s.inflight.reset();
  host.record.last_seen = clock_.Now();
  SaveHost(host);
  MaybePush(s);
}

void PushManager::HandleNack(uint64_t session, const v1::StreamRequest::Nack& nack) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  HostState& host = hosts_[s.host_id];
  if (!s.inflight.has_value() || s.inflight->nonce != nack.nonce()) {
    SHUTTLE_LOG(WARNING) << "host " << s.host_id << ": NACK with unknown nonce '" << nack.nonce()
                         << "' ignored";
    Touch(host);
    return;
  }
  nacks_.Increment();
  SHUTTLE_LOG(WARNING) << "host " << s.host_id << " NACKed version " << s.inflight->version
                       << " (still enforces " << nack.version() << "): " << nack.error();
  host.record.nacked_version = s.inflight->version;
  host.record.nack_version = nack.version();
  host.record.nack_error = nack.error();
  host.record.nack_time = clock_.Now();
  s.inflight.reset();
  host.record.last_seen = clock_.Now();
  SaveHost(host);
  MaybePush(s);  // Only if something newer arrived meanwhile.
}

void PushManager::OnHeartbeat(uint64_t session, const v1::StreamRequest::Heartbeat& heartbeat) {
  worker_.Run([this, session, heartbeat] {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return;
    Session& s = it->second;
    HostState& host = hosts_[s.host_id];
    std::vector<std::string> before = VmNames(host);
    host.record.vms.assign(heartbeat.vms().begin(), heartbeat.vms().end());
    std::vector<std::string> after = VmNames(host);
    std::sort(before.begin(), before.end());
    std::sort(after.begin(), after.end());
    Touch(host);
    if (before != after) {
      SaveHost(host);
      s.needs_push = true;
      MaybePush(s);
    }
  });
}

void PushManager::Disconnect(uint64_t session) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  HostState& host = hosts_[it->second.host_id];
  if (host.session == session) {
    host.session = 0;
    host.record.last_seen = clock_.Now();
    SaveHost(host);
  }
  if (it->second.inflight.has_value()) {
    ended_[session] = EndedSession{it->second.host_id, *it->second.inflight};
    // Queued behind the stream's ACKs and NACKs already on the worker.
    worker_.Run([this, session] {
      absl::MutexLock lock(&mu_);
      ended_.erase(session);
    });
  }
  sessions_.erase(it);
  connected_.Decrement();
}

void PushManager::Tick() {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  const absl::Time now = clock_.Now();
  v1::StreamResponse heartbeat;
  heartbeat.mutable_heartbeat();
  for (auto& [id, s] : sessions_) {
    const HostState& host = hosts_[s.host_id];
    if (now - host.record.last_seen > options_.dead_after) {
      s.sink->Close(absl::UnavailableError(absl::StrCat(
          "no message from the agent for ", absl::FormatDuration(now - host.record.last_seen))));
      continue;
    }
    s.sink->Send(heartbeat);
  }
}

void PushManager::HeartbeatLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.heartbeat_interval);
    if (stopping_) break;
    mu_.Unlock();
    Tick();
    mu_.Lock();
  }
}

v1::HostStatus PushManager::StatusOf(const HostState& host) const {
  v1::HostStatus out;
  out.set_host_id(host.record.host_id);
  out.set_connected(host.session != 0);
  *out.mutable_last_seen() = ToProto(host.record.last_seen);
  out.set_policy_version(host.record.acked_version);
  out.set_fleet_version(snapshot_ == nullptr ? 0 : snapshot_->bundle.version());
  for (const v1::VmInfo& vm : host.record.vms) *out.add_vms() = vm;
  if (host.record.nack_time.has_value()) {
    out.set_last_nack_version(host.record.nacked_version);
    out.set_last_nack_error(host.record.nack_error);
    *out.mutable_last_nack_time() = ToProto(*host.record.nack_time);
  }
  return out;
}

std::vector<v1::HostStatus> PushManager::ListHosts() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::HostStatus> out;
  out.reserve(hosts_.size());
  for (const auto& [id, host] : hosts_) out.push_back(StatusOf(host));
  return out;
}

absl::StatusOr<v1::HostStatus> PushManager::GetHost(const std::string& host_id) const {
  absl::MutexLock lock(&mu_);
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) {
    return absl::NotFoundError(absl::StrCat("host '", host_id, "' has not enrolled"));
  }
  return StatusOf(it->second);
}

}  // namespace shuttle::controller
