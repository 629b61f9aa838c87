#include "bench/sim_fleet.h"

#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/client/policy_snapshot.h"
#include "policy/matcher.h"
#include "shuttle/v1/agent.grpc.pb.h"

namespace shuttle::bench {

grpc::ChannelArguments AgentChannelArgs(absl::Duration keepalive_time) {
  grpc::ChannelArguments args;
  if (keepalive_time > absl::ZeroDuration()) {
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(keepalive_time));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  // One connection per agent, as N real hosts would have; never a subchannel shared by channels.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return args;
}

std::shared_ptr<grpc::ChannelCredentials> AgentCredentials(const AgentIdentity& identity,
                                                           const std::string& ca_pem) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca_pem;
  ssl.pem_private_key = identity.key_pem;
  ssl.pem_cert_chain = identity.cert_pem;
  return grpc::SslCredentials(ssl);
}

// One simulated agent's policy stream. Reads run one at a time (gRPC never overlaps a reactor's
// read callbacks), so the reader's state needs no lock; writes are queued under mu_ because the
// reader (ACK/NACK) and the fleet's heartbeat thread both write. A read is always outstanding
// until the stream ends, so OnDone cannot run before OnReadDone(false) has set closed_, and no
// write starts after that.
class SimAgent final : public grpc::ClientBidiReactor<v1::StreamRequest, v1::StreamResponse> {
 public:
  SimAgent(SimFleet& fleet, size_t index, const SimFleetOptions& options, AgentIdentity identity)
      : fleet_(fleet), index_(index), options_(options), identity_(std::move(identity)) {}

  void Start() {
    channel_ =
        grpc::CreateCustomChannel(options_.address, AgentCredentials(identity_, options_.ca_pem),
                                  AgentChannelArgs(options_.keepalive_time));
    stub_ = v1::AgentService::NewStub(channel_);
    stub_->async()->PolicyStream(&context_, this);
    Outgoing hello;
    v1::StreamRequest::Hello& h = *hello.message.mutable_hello();
    h.set_host_id(identity_.host_id);
    h.set_current_version(0);
    h.set_agent_version("shuttle-bench-fleet");
    AddVms(h.mutable_vms());
    Queue(std::move(hello));
    StartRead(&response_);
    StartCall();
  }

  void Heartbeat() {
    Outgoing beat;
    AddVms(beat.message.mutable_heartbeat()->mutable_vms());
    Queue(std::move(beat));
  }

  void Cancel() { context_.TryCancel(); }

  const std::string& host_id() const { return identity_.host_id; }

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mu_);
      closed_ = true;
      return;
    }
    if (response_.has_push()) HandlePush(response_.push(), response_.ByteSizeLong());
    StartRead(&response_);
  }

  void OnWriteDone(bool ok) override {
    Outgoing sent;
    {
      absl::MutexLock lock(&mu_);
      sent = std::move(queue_.front());
      queue_.pop_front();
      if (!ok) {
        closed_ = true;
        queue_.clear();
      }
      if (!closed_ && !queue_.empty()) {
        StartWrite(&queue_.front().message);
      } else {
        writing_ = false;
      }
    }
    if (ok && sent.message.has_ack()) {
      fleet_.OnAckSent(index_, sent.message.ack().version(), sent.received,
                       std::chrono::steady_clock::now());
    }
  }

  void OnDone(const grpc::Status& status) override { fleet_.OnStreamDone(index_, status); }

 private:
  struct Outgoing {
    v1::StreamRequest message;
    SteadyTime received;  // For an ACK: when its push was read.
  };

  void AddVms(google::protobuf::RepeatedPtrField<v1::VmInfo>* vms) const {
    for (size_t i = 0; i < options_.vms.size(); ++i) {
      v1::VmInfo& vm = *vms->Add();
      vm.set_name(options_.vms[i]);
      vm.set_init_pid(static_cast<uint32_t>(1000 + i));
      vm.set_running(true);
    }
  }

  void HandlePush(const v1::StreamResponse::Push& push, size_t bytes) {
    const SteadyTime received = std::chrono::steady_clock::now();
    fleet_.OnPush(push.is_delta(), bytes);
    std::string error;
    if (push.is_delta() && push.base_version() != version_) {
      error = absl::StrCat("delta against version ", push.base_version(), " but version ", version_,
                           " is enforced; a full snapshot is needed");
    } else if (options_.work == SimAgentWork::kCompile) {
      absl::StatusOr<v1::PolicyBundle> bundle = agent::BundleFromPush(bundle_, push);
      absl::Status compiled =
          bundle.ok() ? policy::CompiledPolicy::Compile(*bundle, identity_.host_id).status()
                      : bundle.status();
      if (compiled.ok()) {
        bundle_ = *std::move(bundle);
      } else {
        error = std::string(compiled.message());
      }
    }
    Outgoing reply;
    reply.received = received;
    if (error.empty()) {
      version_ = push.version();
      reply.message.mutable_ack()->set_version(version_);
      reply.message.mutable_ack()->set_nonce(push.nonce());
    } else {
      reply.message.mutable_nack()->set_version(version_);
      reply.message.mutable_nack()->set_nonce(push.nonce());
      reply.message.mutable_nack()->set_error(error);
      fleet_.OnNack(index_, error);
    }
    Queue(std::move(reply));
  }

  void Queue(Outgoing out) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    queue_.push_back(std::move(out));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front().message);
    }
  }

  SimFleet& fleet_;
  const size_t index_;
  const SimFleetOptions& options_;
  const AgentIdentity identity_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  grpc::ClientContext context_;

  // Reader state.
  v1::StreamResponse response_;
  uint64_t version_ = 0;     // Last version ACKed on this stream.
  v1::PolicyBundle bundle_;  // kCompile: the bundle enforced.

  absl::Mutex mu_;
  std::deque<Outgoing> queue_ ABSL_GUARDED_BY(mu_);  // Front is being written.
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

SimFleet::SimFleet(SimFleetOptions options, std::vector<AgentIdentity> agents)
    : options_(std::move(options)) {
  agents_.reserve(agents.size());
  for (size_t i = 0; i < agents.size(); ++i) {
    agents_.push_back(std::make_unique<SimAgent>(*this, i, options_, std::move(agents[i])));
  }
  for (const auto& agent : agents_) host_ids_.push_back(agent->host_id());
  acked_.resize(agents_.size());
  history_.resize(agents_.size());
}

SimFleet::~SimFleet() { Stop().IgnoreError(); }

void SimFleet::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
  }
  for (auto& agent : agents_) agent->Start();
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
}

void SimFleet::HeartbeatLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.heartbeat_interval)) return;
    }
    for (auto& agent : agents_) agent->Heartbeat();
  }
}

absl::Status SimFleet::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!started_ || stopping_) return absl::OkStatus();
    stopping_ = true;
  }
  if (heartbeat_.joinable()) heartbeat_.join();
  for (auto& agent : agents_) agent->Cancel();
  absl::MutexLock lock(&mu_);
  auto all_done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ == host_ids_.size(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(10))) {
    // gRPC still owns some reactors: freeing them would be a use after free. The process is
    // about to end anyway; leave them.
    for (auto& agent : agents_) agent.release();
    return absl::DeadlineExceededError(absl::StrCat(host_ids_.size() - done_, " of ",
                                                    host_ids_.size(),
                                                    " policy streams did not end within 10 s"));
  }
  return absl::OkStatus();
}

bool SimFleet::FailedLocked() const { return counters_.nacks > 0 || counters_.streams_ended > 0; }

absl::Status SimFleet::WaitAllAcked(uint64_t version, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto count = [this, version]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t n = 0;
    for (auto it = at_version_.lower_bound(version); it != at_version_.end(); ++it) {
      n += it->second;
    }
    return n;
  };
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return FailedLocked() || count() == host_ids_.size();
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  if (FailedLocked()) {
    return absl::AbortedError(absl::StrCat(counters_.nacks, " NACKs and ", counters_.streams_ended,
                                           " ended streams; first: ", counters_.first_error));
  }
  if (count() != host_ids_.size()) {
    return absl::DeadlineExceededError(absl::StrCat(count(), " of ", host_ids_.size(),
                                                    " agents ACKed version ", version, " within ",
                                                    absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

std::vector<std::optional<AckTiming>> SimFleet::Timings(uint64_t version) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::optional<AckTiming>> out(host_ids_.size());
  for (size_t i = 0; i < host_ids_.size(); ++i) {
    for (const auto& [v, timing] : history_[i]) {
      if (v >= version) {
        out[i] = timing;
        break;
      }
    }
  }
  return out;
}

SimFleetCounters SimFleet::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void SimFleet::OnPush(bool delta, size_t bytes) {
  absl::MutexLock lock(&mu_);
  ++(delta ? counters_.pushes_delta : counters_.pushes_full);
  counters_.push_bytes += bytes;
}

void SimFleet::OnAckSent(size_t agent, uint64_t version, SteadyTime received, SteadyTime acked) {
  absl::MutexLock lock(&mu_);
  ++counters_.acks;
  std::optional<uint64_t>& last = acked_[agent];
  if (last.has_value()) {
    auto it = at_version_.find(*last);
    if (--it->second == 0) at_version_.erase(it);
  }
  last = version;
  ++at_version_[version];
  history_[agent].emplace_back(version, AckTiming{received, acked});
}

void SimFleet::OnNack(size_t agent, const std::string& error) {
  absl::MutexLock lock(&mu_);
  ++counters_.nacks;
  if (counters_.first_error.empty()) {
    counters_.first_error = absl::StrCat("agent ", host_ids_[agent], " NACKed: ", error);
  }
}

void SimFleet::OnStreamDone(size_t agent, const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  ++done_;
  if (stopping_) return;
  ++counters_.streams_ended;
  if (counters_.first_error.empty()) {
    counters_.first_error =
        absl::StrCat("agent ", host_ids_[agent], ": policy stream ended (code ",
                     static_cast<int>(status.error_code()), "): ", status.error_message());
  }
}

}  // namespace shuttle::bench
