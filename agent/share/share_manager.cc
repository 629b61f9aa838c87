// ShareManager: reconciles the wanted shares (PlanShares) with the mounted ones (share_manager.h).
#include "agent/share/share_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"

namespace shuttle::agent::share {
namespace {

std::string Describe(const BindSpec& bind) {
  return absl::StrCat(bind.source_vm, ":", bind.source_path, " -> ", bind.target_vm, ":",
                      bind.target_path, bind.read_only ? " (read-only)" : "");
}

bool SameBind(const BindSpec& a, const BindSpec& b) {
  return a.source_vm == b.source_vm && a.source_path == b.source_path &&
         a.target_vm == b.target_vm && a.target_path == b.target_path && a.read_only == b.read_only;
}

}  // namespace

absl::Status VmShareMounter::Bind(const BindSpec& spec, v1::InteractionKind kind) {
  absl::StatusOr<int> fd = mounter_.OpenInVm(spec.source_vm, spec.source_path, O_PATH);
  if (!fd.ok()) return fd.status();
  struct stat st;
  const int rc = fstat(*fd, &st);
  const int err = errno;
  absl::Status status;
  if (rc != 0) {
    status = absl::ErrnoToStatus(
        err, absl::StrCat("VM '", spec.source_vm, "', path '", spec.source_path, "': fstat"));
  } else if (kind == v1::FIFO_OPEN ? !S_ISFIFO(st.st_mode) : !S_ISREG(st.st_mode)) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "VM '", spec.source_vm, "', path '", spec.source_path, "': not a ",
        kind == v1::FIFO_OPEN ? "FIFO" : "regular file (a POSIX shm object)", ": not shared"));
  } else {
    status = mounter_.BindFd(spec.source_vm, *fd, spec.target_vm, spec.target_path, spec.read_only);
  }
  close(*fd);
  return status;
}

ShareManager::ShareManager(ShareMounter& mounter, VmLister list_vms, Clock& clock,
                           prometheus::Registry& metrics, ShareManagerOptions options)
    : mounter_(mounter),
      list_vms_(std::move(list_vms)),
      clock_(clock),
      options_(std::move(options)),
      shares_family_(prometheus::BuildGauge()
                         .Name("shuttle_agent_shares")
                         .Help("FIFO and POSIX shm shares (bind mounts) the policy wants, by "
                               "state: active (mounted), pending (source missing), failed")
                         .Register(metrics)),
      active_gauge_(shares_family_.Add({{"state", "active"}})),
      pending_gauge_(shares_family_.Add({{"state", "pending"}})),
      failed_gauge_(shares_family_.Add({{"state", "failed"}})),
      changes_family_(prometheus::BuildCounter()
                          .Name("shuttle_agent_share_changes_total")
                          .Help("Share bind mounts made (op=apply) and removed (op=remove)")
                          .Register(metrics)),
      applied_(changes_family_.Add({{"op", "apply"}})),
      removed_(changes_family_.Add({{"op", "remove"}})),
      skipped_family_(prometheus::BuildGauge()
                          .Name("shuttle_agent_share_rules_skipped")
                          .Help("fifo-open/shm-open rules of the current policy that open a "
                                "channel but cannot be shared by a bind mount, by reason")
                          .Register(metrics)) {
  absl::MutexLock lock(&entries_mu_);
  LoadState();
}

ShareManager::~ShareManager() { Stop(); }

void ShareManager::OnPolicy(std::shared_ptr<const policy::CompiledPolicy> policy) {
  absl::MutexLock lock(&mu_);
  policy_ = std::move(policy);
  dirty_ = true;
}

void ShareManager::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void ShareManager::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ShareManager::Loop() {
  while (true) {
    ReconcileOnce();
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &ShareManager::WakeLocked), options_.poll_interval);
    if (stop_) return;
  }
}

void ShareManager::ReconcileOnce() {
  std::shared_ptr<const policy::CompiledPolicy> policy;
  {
    absl::MutexLock lock(&mu_);
    policy = policy_;
    dirty_ = false;
  }
  if (policy == nullptr) return;  // Nothing to follow yet (the agent sets one before Start).
  const std::vector<std::string> vms = list_vms_();
  const SharePlan plan = PlanShares(*policy, vms);
  const absl::Time now = clock_.Now();

  absl::MutexLock lock(&entries_mu_);
  LogSkipped(plan.skipped);
  for (auto& [key, entry] : entries_) entry.wanted = false;
  for (const WantedShare& share : plan.shares) {
    Entry& entry = entries_[{share.bind.target_vm, share.bind.target_path}];
    if (!SameBind(entry.bind, share.bind)) {
      // New, or another source or flag for this mount point: try it now.
      entry.bind = share.bind;
      entry.next_attempt = absl::InfinitePast();
      entry.backoff = absl::ZeroDuration();
      entry.state = State::kPending;  // Until Bind says otherwise (and logs it).
    }
    entry.kind = share.kind;
    entry.rule = share.rule;
    entry.wanted = true;
  }

  // Remove what is no longer wanted. A VM that is gone took its mounts with it.
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& entry = it->second;
    if (entry.wanted) {
      ++it;
      continue;
    }
    if (std::find(vms.begin(), vms.end(), entry.bind.target_vm) == vms.end() || !entry.mounted) {
      it = entries_.erase(it);
      continue;
    }
    absl::Status unbound = mounter_.Unbind(entry.bind.target_vm, entry.bind.target_path);
    if (unbound.ok() || absl::IsNotFound(unbound)) {
      SHUTTLE_LOG(INFO) << "share removed (no rule wants it any more): " << Describe(entry.bind)
                        << (entry.rule.empty() ? "" : ", was rule " + entry.rule);
      removed_.Increment();
      it = entries_.erase(it);
      continue;
    }
    if (entry.last_error != unbound.message()) {
      SHUTTLE_LOG(WARNING) << "cannot remove share " << Describe(entry.bind) << ": " << unbound
                           << " (retrying)";
    }
    entry.state = State::kFailed;
    entry.last_error = std::string(unbound.message());
    ++it;
  }

  // Apply what is wanted: active shares are checked on every pass (Bind is idempotent and mends
  // a mount whose source was replaced); the others when their retry is due.
  for (auto& [key, entry] : entries_) {
    if (!entry.wanted) continue;
    if (entry.state == State::kActive || now >= entry.next_attempt) Apply(entry, now);
  }
  SaveState();
  UpdateMetrics(plan);
}

void ShareManager::Apply(Entry& entry, absl::Time now) {
  absl::Status bound = mounter_.Bind(entry.bind, entry.kind);
  if (bound.ok()) {
    if (entry.state != State::kActive || !entry.mounted) {
      SHUTTLE_LOG(INFO) << "share applied by rule " << entry.rule << ": " << Describe(entry.bind);
      applied_.Increment();
    }
    entry.state = State::kActive;
    entry.mounted = true;
    entry.backoff = absl::ZeroDuration();
    entry.last_error.clear();
    return;
  }
  if (absl::IsNotFound(bound)) {
    // The source (or its VM) does not exist (yet, or any more): a mount of a source that was
    // removed would keep a dead object visible, so it goes until the source is back.
    if (entry.mounted) {
      absl::Status unbound = mounter_.Unbind(entry.bind.target_vm, entry.bind.target_path);
      if (unbound.ok()) {
        SHUTTLE_LOG(INFO) << "share removed until its source is back (rule " << entry.rule
                          << "): " << Describe(entry.bind);
        removed_.Increment();
        entry.mounted = false;
      }
    }
    Retry(entry, now, State::kPending, bound);
    return;
  }
  Retry(entry, now, State::kFailed, bound);
}

void ShareManager::Retry(Entry& entry, absl::Time now, State state, const absl::Status& error) {
  if (entry.state != state || entry.last_error != error.message()) {
    if (state == State::kPending) {
      SHUTTLE_LOG(INFO) << "share of rule " << entry.rule
                        << " waits for its source: " << Describe(entry.bind) << ": "
                        << error.message();
    } else {
      SHUTTLE_LOG(WARNING) << "share of rule " << entry.rule << " failed: " << Describe(entry.bind)
                           << ": " << error;
    }
  }
  entry.state = state;
  entry.last_error = std::string(error.message());
  entry.backoff = entry.backoff == absl::ZeroDuration()
                      ? options_.initial_backoff
                      : std::min(entry.backoff * 2, options_.max_backoff);
  entry.next_attempt = now + entry.backoff;
}

void ShareManager::LogSkipped(const std::vector<SkippedRule>& skipped) {
  for (const SkippedRule& rule : skipped) {
    if (logged_skips_.emplace(rule.rule, rule.reason).second) {
      SHUTTLE_LOG(INFO) << "rule " << rule.rule << " shares nothing by bind mount (" << rule.reason
                        << "): " << rule.detail;
    }
  }
}

void ShareManager::UpdateMetrics(const SharePlan& plan) {
  double active = 0, pending = 0, failed = 0;
  for (const auto& [key, entry] : entries_) {
    if (!entry.wanted) continue;
    (entry.state == State::kActive    ? active
     : entry.state == State::kPending ? pending
                                      : failed) += 1;
  }
  active_gauge_.Set(active);
  pending_gauge_.Set(pending);
  failed_gauge_.Set(failed);
  for (const char* reason : {kSkipPrefix, kSkipSubject, kSkipObjectVm, kSkipAsk, kSkipMonitor,
                             kSkipName, kSkipOverridden}) {
    const double n = static_cast<double>(
        std::count_if(plan.skipped.begin(), plan.skipped.end(),
                      [reason](const SkippedRule& s) { return s.reason == reason; }));
    skipped_family_.Add({{"reason", reason}}).Set(n);
  }
}

void ShareManager::LoadState() {
  if (options_.state_file.empty()) return;
  std::ifstream in(options_.state_file);
  if (!in) return;  // None yet.
  std::stringstream text;
  text << in.rdbuf();
  saved_state_ = text.str();
  for (absl::string_view line : absl::StrSplit(saved_state_, '\n', absl::SkipEmpty())) {
    std::vector<std::string> fields = absl::StrSplit(line, '\t');
    if (fields.size() != 2 || fields[1].empty() || fields[1][0] != '/') {
      SHUTTLE_LOG(WARNING) << options_.state_file << ": ignoring malformed line '" << line << "'";
      continue;
    }
    Entry& entry = entries_[{fields[0], fields[1]}];
    entry.bind.target_vm = fields[0];
    entry.bind.target_path = fields[1];
    entry.mounted = true;
    entry.state = State::kActive;
  }
}

void ShareManager::SaveState() {
  if (options_.state_file.empty()) return;
  std::string text;
  for (const auto& [key, entry] : entries_) {
    if (entry.mounted) absl::StrAppend(&text, key.first, "\t", key.second, "\n");
  }
  if (text == saved_state_) return;
  const std::string tmp = options_.state_file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      SHUTTLE_LOG(ERROR) << "cannot write " << tmp << ": " << std::strerror(errno);
      return;
    }
  }
  if (std::rename(tmp.c_str(), options_.state_file.c_str()) != 0) {
    SHUTTLE_LOG(ERROR) << "cannot rename " << tmp << ": " << std::strerror(errno);
    return;
  }
  saved_state_ = std::move(text);
}

std::vector<ShareManager::ShareStatus> ShareManager::Shares() const {
  absl::MutexLock lock(&entries_mu_);
  std::vector<ShareStatus> out;
  for (const auto& [key, entry] : entries_) {
    out.push_back({entry.bind, entry.rule, entry.state, entry.last_error});
  }
  return out;
}

}  // namespace shuttle::agent::share
