#include "agent/client/policy_client.h"

#include <algorithm>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "agent/client/policy_snapshot.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "policy/matcher.h"

namespace shuttle::agent {
namespace {

// A NACK's error goes to the controller's store and `shuttlectl hosts`; keep it bounded.
constexpr size_t kMaxErrorBytes = 4096;

int Millis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), 1 << 30));
}

prometheus::Family<prometheus::Counter>& PushesFamily(prometheus::Registry& registry) {
  return prometheus::BuildCounter()
      .Name("shuttle_agent_policy_pushes_total")
      .Help("Policy pushes from the controller, by answer (ack: now enforced; nack: rejected)")
      .Register(registry);
}

}  // namespace

PolicyClient::PolicyClient(PolicyClientOptions options, PolicyHolder& holder, VmLister vms,
                           prometheus::Registry& registry)
    : options_(std::move(options)),
      holder_(holder),
      vms_(std::move(vms)),
      clock_(options_.clock != nullptr ? *options_.clock : RealClock()),
      version_gauge_(prometheus::BuildGauge()
                         .Name("shuttle_agent_policy_version")
                         .Help("Fleet policy version this agent enforces (0: none)")
                         .Register(registry)
                         .Add({})),
      acks_counter_(PushesFamily(registry).Add({{"result", "ack"}})),
      nacks_counter_(PushesFamily(registry).Add({{"result", "nack"}})),
      connected_gauge_(prometheus::BuildGauge()
                           .Name("shuttle_agent_controller_connected")
                           .Help("1 while a policy stream to the controller is open")
                           .Register(registry)
                           .Add({})),
      reconnects_counter_(prometheus::BuildCounter()
                              .Name("shuttle_agent_controller_reconnects_total")
                              .Help("Connection attempts to the controller after the first")
                              .Register(registry)
                              .Add({})) {
  // Version 0 until LoadPersisted or a push: the controller then sends a full snapshot, since
  // the agent has no bundle a delta could apply to (whatever the holder enforces meanwhile).
  version_gauge_.Set(0);
}

PolicyClient::~PolicyClient() { Stop(); }

absl::StatusOr<uint64_t> PolicyClient::LoadPersisted() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("LoadPersisted after Start");
  }
  absl::StatusOr<LoadedPolicy> loaded =
      LoadAndCompileSnapshot(options_.snapshot_path, options_.host_id);
  if (!loaded.ok()) return loaded.status();
  holder_.Set(loaded->compiled);
  bundle_ = std::move(loaded->bundle);
  version_gauge_.Set(static_cast<double>(bundle_.version()));
  absl::MutexLock lock(&mu_);
  state_.version = bundle_.version();
  return bundle_.version();
}

void PolicyClient::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

void PolicyClient::NotifyVmsChanged() {
  absl::MutexLock lock(&mu_);
  vms_changed_ = true;
}

void PolicyClient::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

PolicyClientState PolicyClient::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool PolicyClient::WaitFor(const std::function<bool(const PolicyClientState&)>& pred,
                           absl::Duration timeout) const {
  auto holds = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(state_); };
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

std::shared_ptr<grpc::Channel> PolicyClient::NewChannel() const {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(options_.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(options_.keepalive_timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Each attempt gets its own channel and subchannel, so our backoff decides when to retry,
  // not a shared subchannel still waiting out gRPC's own (up to 120 s) reconnect backoff.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Millis(options_.backoff.initial));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Millis(options_.backoff.initial));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Millis(options_.backoff.max));
  // A full snapshot for a host with many policies can exceed gRPC's 4 MiB default; refusing it
  // would end the stream before the agent could even NACK, and every reconnect would repeat it.
  args.SetMaxReceiveMessageSize(static_cast<int>(kMaxPolicyBundleBytes));
  return grpc::CreateCustomChannel(options_.controller_address, options_.credentials, args);
}

void PolicyClient::Run() {
  Backoff backoff(options_.backoff, options_.random);
  bool first = true;
  uint64_t failures = 0;  // Streams in a row that never opened (for quieter logs).
  uint64_t sessions_before = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      if (!first) ++state_.reconnects;
    }
    if (!first) reconnects_counter_.Increment();
    first = false;

    absl::Status ended = RunSession(backoff);
    absl::Duration delay = backoff.Next();
    bool opened = false;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      state_.last_error = std::string(ended.message());
      opened = state_.sessions != sessions_before;
      sessions_before = state_.sessions;
    }
    failures = opened ? 0 : failures + 1;
    // While the controller stays unreachable, say so at the first failure and every 10th.
    if (failures <= 1 || failures % 10 == 0) {
      SHUTTLE_LOG(WARNING) << "controller " << options_.controller_address
                           << ": policy stream ended (" << ended << "); reconnecting in " << delay
                           << (failures > 1 ? absl::StrCat(" (", failures, " attempts failed)")
                                            : std::string());
    } else {
      SHUTTLE_LOG(DEBUG) << "controller " << options_.controller_address << ": " << ended
                         << "; reconnecting in " << delay;
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), delay);
  }
}

bool PolicyClient::Write(grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>& stream,
                         const v1::StreamRequest& request) {
  absl::MutexLock lock(&write_mu_);
  return stream.Write(request);
}

absl::Status PolicyClient::RunSession(Backoff& backoff) {
  std::shared_ptr<grpc::Channel> channel = NewChannel();
  std::unique_ptr<v1::AgentService::Stub> stub = v1::AgentService::NewStub(channel);
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("stopping");
    context_ = &context;
    session_done_ = false;
  }
  const absl::Time started = clock_.Now();
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>> stream =
      stub->PolicyStream(&context);

  v1::StreamRequest hello;
  hello.mutable_hello()->set_host_id(options_.host_id);
  hello.mutable_hello()->set_current_version(bundle_.version());
  hello.mutable_hello()->set_agent_version(options_.agent_version);
  if (vms_) {
    for (v1::VmInfo& vm : vms_()) *hello.mutable_hello()->add_vms() = std::move(vm);
  }
  std::thread heartbeats;
  bool resync = false;
  if (Write(*stream, hello)) {
    {
      absl::MutexLock lock(&mu_);
      state_.connected = true;
      ++state_.sessions;
      connected_gauge_.Set(1);  // Under mu_, so whoever sees `connected` sees the gauge too.
    }
    SHUTTLE_LOG(INFO) << "controller " << options_.controller_address
                      << ": policy stream open, enforcing version " << bundle_.version();
    heartbeats = std::thread([this, &stream] {
      while (true) {
        {
          absl::MutexLock lock(&mu_);
          auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return session_done_ || stopping_ || vms_changed_;
          };
          mu_.AwaitWithTimeout(absl::Condition(&wake), options_.heartbeat_interval);
          if (session_done_ || stopping_) return;
          vms_changed_ = false;  // This heartbeat carries the change.
        }
        v1::StreamRequest beat;
        beat.mutable_heartbeat();
        if (vms_) {
          for (v1::VmInfo& vm : vms_()) *beat.mutable_heartbeat()->add_vms() = std::move(vm);
        }
        if (!Write(*stream, beat)) return;
      }
    });

    bool heard = false;
    v1::StreamResponse response;
    while (stream->Read(&response)) {
      if (!heard) {
        heard = true;
        backoff.Reset();
      }
      if (!response.has_push()) continue;  // Heartbeats only prove the controller is there.
      v1::StreamRequest reply;
      AfterPush after = HandlePush(response.push(), reply);
      if (!Write(*stream, reply)) break;
      if (after == AfterPush::kResync) {
        // Ask for a full snapshot the only way the protocol has: a new stream, a new Hello.
        context.TryCancel();
        resync = true;
        break;
      }
    }
  }
  {
    absl::MutexLock lock(&mu_);
    session_done_ = true;
  }
  if (heartbeats.joinable()) heartbeats.join();
  grpc::Status finished = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    context_ = nullptr;
    state_.connected = false;
    connected_gauge_.Set(0);
  }
  // A stream that lived long is a connection that worked, even if the controller said nothing.
  if (clock_.Now() - started > options_.backoff.max) backoff.Reset();
  if (resync) return absl::AbortedError("asking for a full snapshot on a new stream");
  if (finished.ok()) return absl::UnavailableError("the controller closed the stream");
  return FromGrpcStatus(finished);
}

PolicyClient::AfterPush PolicyClient::HandlePush(const v1::StreamResponse::Push& push,
                                                 v1::StreamRequest& reply) {
  absl::StatusOr<v1::PolicyBundle> bundle = BundleFromPush(bundle_, push);
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> compiled =
      bundle.ok() ? policy::CompiledPolicy::Compile(*bundle, options_.host_id)
                  : absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>>(bundle.status());
  if (!compiled.ok()) {
    std::string error(compiled.status().message());
    if (error.size() > kMaxErrorBytes) error.resize(kMaxErrorBytes);
    SHUTTLE_LOG(WARNING) << "policy version " << push.version() << " rejected, still enforcing "
                         << bundle_.version() << ": " << error;
    v1::StreamRequest::Nack* nack = reply.mutable_nack();
    nack->set_version(bundle_.version());
    nack->set_nonce(push.nonce());
    nack->set_error(error);
    nacks_counter_.Increment();
    absl::MutexLock lock(&mu_);
    ++state_.nacks;
    state_.last_error = error;
    return bundle.status().code() == absl::StatusCode::kFailedPrecondition ? AfterPush::kResync
                                                                           : AfterPush::kContinue;
  }
  holder_.Set(*std::move(compiled));
  bundle_ = *std::move(bundle);
  version_gauge_.Set(static_cast<double>(bundle_.version()));
  if (!options_.snapshot_path.empty()) {
    absl::Status saved = SavePolicySnapshot(options_.snapshot_path, bundle_);
    if (!saved.ok()) {
      // Enforced all the same; only a restart before the next push would lose it.
      SHUTTLE_LOG(ERROR) << "cannot persist policy version " << bundle_.version() << ": " << saved;
    }
  }
  SHUTTLE_LOG(INFO) << "enforcing policy version " << bundle_.version() << " ("
                    << (push.is_delta() ? "delta" : "full snapshot") << ", "
                    << bundle_.policies_size() << " policies)";
  v1::StreamRequest::Ack* ack = reply.mutable_ack();
  ack->set_version(bundle_.version());
  ack->set_nonce(push.nonce());
  acks_counter_.Increment();
  absl::MutexLock lock(&mu_);
  ++state_.acks;
  state_.version = bundle_.version();
  return AfterPush::kContinue;
}

}  // namespace shuttle::agent
