// Unit tests of ShareManager with a fake mounter and a FakeClock: apply, remove on a policy
// change, pending sources with backoff, VMs appearing and going, the state file across a
// restart, metrics, and the thread woken by a policy change.
#include "agent/share/share_manager.h"

#include <prometheus/text_serializer.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policy/policy_testing.h"

namespace shuttle::agent::share {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Records calls; a target is "mounted" after a successful Bind. Bind fails with NOT_FOUND while
// the source is listed in `missing`.
class FakeMounter final : public ShareMounter {
 public:
  absl::Status Bind(const BindSpec& spec, v1::InteractionKind kind) override {
    EXPECT_EQ(kind, v1::FIFO_OPEN);
    absl::MutexLock lock(&mu_);
    binds_.push_back(absl::StrCat(spec.source_vm, ":", spec.source_path, "->", spec.target_vm, ":",
                                  spec.target_path));
    if (missing_.contains(spec.source_vm + ":" + spec.source_path)) {
      return absl::NotFoundError("no such source");
    }
    if (!fail_with_.ok()) return fail_with_;
    mounted_[spec.target_vm + ":" + spec.target_path] = spec.source_vm + ":" + spec.source_path;
    return absl::OkStatus();
  }
  absl::Status Unbind(const std::string& vm, const std::string& path) override {
    absl::MutexLock lock(&mu_);
    unbinds_.push_back(vm + ":" + path);
    mounted_.erase(vm + ":" + path);
    return absl::OkStatus();
  }

  void SetMissing(const std::string& source, bool missing) {
    absl::MutexLock lock(&mu_);
    if (missing) {
      missing_.insert(source);
    } else {
      missing_.erase(source);
    }
  }
  void FailWith(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_with_ = std::move(status);
  }
  std::map<std::string, std::string> mounted() const {
    absl::MutexLock lock(&mu_);
    return mounted_;
  }
  size_t bind_calls() const {
    absl::MutexLock lock(&mu_);
    return binds_.size();
  }
  std::vector<std::string> unbinds() const {
    absl::MutexLock lock(&mu_);
    return unbinds_;
  }
  // Waits (bounded) until `target` is mounted; true if it is.
  bool AwaitMounted(const std::string& target, bool want) const {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return mounted_.contains(target) == want; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(20));
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> binds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> unbinds_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> mounted_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> missing_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_with_ ABSL_GUARDED_BY(mu_);
};

using ::shuttle::policy::testing::CompileYaml;

constexpr char kFifoPolicy[] = R"(
name: p
rules:
  - name: web-fifo
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/app/fifo }
    action: allow
  - name: prefix
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/x/* }
    action: allow
)";

constexpr char kEmptyPolicy[] = R"(
name: p
rules:
  - name: unrelated
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/s.sock }
    action: allow
)";

class ShareManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/share-manager-test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    options_.state_file = dir_ + "/shares";
    options_.poll_interval = absl::Milliseconds(20);
  }
  void TearDown() override {
    manager_.reset();
    unlink(options_.state_file.c_str());
    rmdir(dir_.c_str());
  }

  void MakeManager() {
    manager_ = std::make_unique<ShareManager>(
        mounter_,
        [this] {
          absl::MutexLock lock(&vms_mu_);
          return vms_;
        },
        clock_, metrics_, options_);
  }
  void SetVms(std::vector<std::string> vms) {
    absl::MutexLock lock(&vms_mu_);
    vms_ = std::move(vms);
  }
  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }

  std::string dir_;
  ShareManagerOptions options_;
  FakeMounter mounter_;
  FakeClock clock_;
  prometheus::Registry metrics_;
  absl::Mutex vms_mu_;
  std::vector<std::string> vms_ ABSL_GUARDED_BY(vms_mu_) = {"db", "web"};
  std::unique_ptr<ShareManager> manager_;
};

TEST_F(ShareManagerTest, AppliesAndRemovesWithThePolicy) {
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.mounted(),
              ElementsAre(::testing::Pair("web:/run/app/fifo", "db:/run/app/fifo")));
  std::vector<ShareManager::ShareStatus> shares = manager_->Shares();
  ASSERT_EQ(shares.size(), 1u);
  EXPECT_EQ(shares[0].rule, "p/web-fifo");
  EXPECT_EQ(shares[0].state, ShareManager::State::kActive);
  std::string scraped = Scrape();
  EXPECT_THAT(scraped, HasSubstr("shuttle_agent_shares{state=\"active\"} 1"));
  EXPECT_THAT(scraped, HasSubstr("shuttle_agent_share_changes_total{op=\"apply\"} 1"));
  EXPECT_THAT(scraped, HasSubstr("shuttle_agent_share_rules_skipped{reason=\"prefix\"} 1"));

  // Checked again on every pass, but applied (and counted) once.
  manager_->ReconcileOnce();
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_share_changes_total{op=\"apply\"} 1"));

  manager_->OnPolicy(CompileYaml(kEmptyPolicy));
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.mounted(), IsEmpty());
  EXPECT_THAT(mounter_.unbinds(), ElementsAre("web:/run/app/fifo"));
  EXPECT_THAT(manager_->Shares(), IsEmpty());
  scraped = Scrape();
  EXPECT_THAT(scraped, HasSubstr("shuttle_agent_shares{state=\"active\"} 0"));
  EXPECT_THAT(scraped, HasSubstr("shuttle_agent_share_changes_total{op=\"remove\"} 1"));
}

TEST_F(ShareManagerTest, AMissingSourceIsRetriedWithBackoff) {
  mounter_.SetMissing("db:/run/app/fifo", true);
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->ReconcileOnce();
  EXPECT_EQ(mounter_.bind_calls(), 1u);
  EXPECT_EQ(manager_->Shares()[0].state, ShareManager::State::kPending);
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_shares{state=\"pending\"} 1"));
  // Not before its backoff (1 s, then 2 s, 4 s ...).
  manager_->ReconcileOnce();
  EXPECT_EQ(mounter_.bind_calls(), 1u);
  clock_.Advance(absl::Seconds(1));
  manager_->ReconcileOnce();
  EXPECT_EQ(mounter_.bind_calls(), 2u);
  clock_.Advance(absl::Seconds(1));
  manager_->ReconcileOnce();
  EXPECT_EQ(mounter_.bind_calls(), 2u);
  clock_.Advance(absl::Seconds(1));
  manager_->ReconcileOnce();
  EXPECT_EQ(mounter_.bind_calls(), 3u);
  // The source appears.
  mounter_.SetMissing("db:/run/app/fifo", false);
  clock_.Advance(absl::Seconds(4));
  manager_->ReconcileOnce();
  EXPECT_EQ(manager_->Shares()[0].state, ShareManager::State::kActive);
  EXPECT_THAT(mounter_.mounted(), ::testing::SizeIs(1));
  // It goes away again: the stale bind is removed until it is back.
  mounter_.SetMissing("db:/run/app/fifo", true);
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.mounted(), IsEmpty());
  EXPECT_EQ(manager_->Shares()[0].state, ShareManager::State::kPending);
}

TEST_F(ShareManagerTest, OtherErrorsAreFailedAndRetried) {
  mounter_.FailWith(absl::PermissionDeniedError("refused"));
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->ReconcileOnce();
  std::vector<ShareManager::ShareStatus> shares = manager_->Shares();
  ASSERT_EQ(shares.size(), 1u);
  EXPECT_EQ(shares[0].state, ShareManager::State::kFailed);
  EXPECT_EQ(shares[0].last_error, "refused");
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_shares{state=\"failed\"} 1"));
  mounter_.FailWith(absl::OkStatus());
  clock_.Advance(absl::Seconds(1));
  manager_->ReconcileOnce();
  EXPECT_EQ(manager_->Shares()[0].state, ShareManager::State::kActive);
}

TEST_F(ShareManagerTest, FollowsVmsAppearingAndGoing) {
  SetVms({"db"});
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.mounted(), IsEmpty());
  SetVms({"db", "web"});
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.mounted(), ::testing::SizeIs(1));
  // web goes: its mounts went with it, nothing to unbind.
  SetVms({"db"});
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.unbinds(), IsEmpty());
  EXPECT_THAT(manager_->Shares(), IsEmpty());
}

TEST_F(ShareManagerTest, ARestartedManagerRemovesWhatItsPolicyNoLongerWants) {
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->ReconcileOnce();
  manager_.reset();  // The mounts stay.
  {
    std::ifstream in(options_.state_file);
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, "web\t/run/app/fifo");
  }
  MakeManager();
  manager_->OnPolicy(CompileYaml(kEmptyPolicy));
  manager_->ReconcileOnce();
  EXPECT_THAT(mounter_.unbinds(), ElementsAre("web:/run/app/fifo"));
  std::ifstream in(options_.state_file);
  std::string rest((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rest, "");
}

TEST_F(ShareManagerTest, TheThreadFollowsPolicyChanges) {
  MakeManager();
  manager_->OnPolicy(CompileYaml(kFifoPolicy));
  manager_->Start();
  EXPECT_TRUE(mounter_.AwaitMounted("web:/run/app/fifo", true));
  manager_->OnPolicy(CompileYaml(kEmptyPolicy));
  EXPECT_TRUE(mounter_.AwaitMounted("web:/run/app/fifo", false));
  manager_->Stop();
  manager_->Stop();
}

}  // namespace
}  // namespace shuttle::agent::share
