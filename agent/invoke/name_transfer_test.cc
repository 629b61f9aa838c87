// Tests of name transfer: the pure path helpers, and with real VMs (VmManager, VmMounter; needs
// root) that only what was named becomes visible in the target VM, read-only unless writable,
// that `..`, symlinks and a racing swap cannot expose a file outside the caller's VM, that only
// regular files and directories are handed over, and that the binds go with the NameTransfer.
#include "agent/invoke/name_transfer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/vm/proc_util.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::invoke {
namespace {

using ::shuttle::testing::IsOk;
using ::testing::Optional;

TEST(AbsoluteNameTest, JoinsAndNormalises) {
  EXPECT_THAT(AbsoluteName("/home/u", "f.txt"), Optional(std::string("/home/u/f.txt")));
  EXPECT_THAT(AbsoluteName("/home/u", "/etc//./hosts"), Optional(std::string("/etc/hosts")));
  EXPECT_THAT(AbsoluteName("/", "."), Optional(std::string("/")));
  // ".." is kept for the resolution inside the VM's root to handle.
  EXPECT_THAT(AbsoluteName("/a", "../../x"), Optional(std::string("/a/../../x")));
  EXPECT_EQ(AbsoluteName("/", ""), std::nullopt);
  EXPECT_EQ(AbsoluteName("/", std::string("a\0b", 3)), std::nullopt);
  EXPECT_EQ(AbsoluteName("/", std::string(5000, 'x')), std::nullopt);
}

TEST(LeafNameTest, LastComponent) {
  EXPECT_EQ(LeafName("/home/u/f.txt"), "f.txt");
  EXPECT_EQ(LeafName("/"), "root");
  EXPECT_EQ(LeafName("/a/.."), "root");
}

class NameTransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "name_transfer_test creates VMs and mounts: run it as root";
    char state[] = "/var/tmp/shuttle-xfer-test.XXXXXX";
    ASSERT_NE(mkdtemp(state), nullptr) << strerror(errno);
    state_root_ = state;
    VmManagerOptions options;
    options.state_dir = state_root_ + "/vms";
    options.init_binary = SHUTTLE_VM_INIT_PATH;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(vms_, VmManager::Open(options));
    // A host file no VM can see: the state dir is hidden under an empty tmpfs in every VM.
    secret_ = options.state_dir + "/secret.txt";
    int fd = open(secret_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "SECRET", 6), 6);
    close(fd);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(a_, vms_->Create("xa"));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(b_, vms_->Create("xb"));
    mounter_ = std::make_unique<VmMounter>(*vms_);
    ASSERT_TRUE(WriteIn(a_, "/tmp/in-a.txt", "from a"));
    ASSERT_EQ(mkdir(InRoot(a_, "/tmp/dir").c_str(), 0755), 0) << strerror(errno);
    ASSERT_TRUE(WriteIn(a_, "/tmp/dir/inner.txt", "inner"));
  }

  void TearDown() override {
    mounter_.reset();
    if (vms_ != nullptr) {
      for (const VmInfo& vm : vms_->List()) EXPECT_THAT(vms_->Destroy(vm.name), IsOk());
      vms_.reset();
    }
    if (!state_root_.empty()) {
      EXPECT_THAT(vm_internal::RemoveTree(state_root_), IsOk());
    }
  }

  std::string InRoot(const VmInfo& vm, const std::string& path) {
    return absl::StrCat("/proc/", vm.init_pid, "/root", path);
  }

  // Writes `text` to `path` as `vm` sees it (through its init's root, which walks the VM's
  // own mounts); false if it can't.
  bool WriteIn(const VmInfo& vm, const std::string& path, const std::string& text) {
    std::ofstream out(InRoot(vm, path), std::ios::trunc);
    out << text;
    return static_cast<bool>(out.flush());
  }

  // Reads `path` as `vm` sees it ("" when it can't).
  std::string ReadIn(const VmInfo& vm, const std::string& path) {
    std::ifstream in(InRoot(vm, path));
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  std::string ReadInB(const std::string& path) { return ReadIn(b_, path); }

  std::string state_root_;
  std::string secret_;
  std::unique_ptr<VmManager> vms_;
  std::unique_ptr<VmMounter> mounter_;
  VmInfo a_;
  VmInfo b_;
};

TEST_F(NameTransferTest, ReadOnlyFileReachesTargetAndGoesAway) {
  std::string target;
  {
    NameTransfer transfer(*mounter_, "xa", "xb", "/run/shuttle-xfer/t1");
    std::optional<std::string> named = transfer.Resolve("/tmp", "in-a.txt");
    ASSERT_THAT(named, Optional(std::string("/tmp/in-a.txt")));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(Transferred t, transfer.Bind(*named, 1, /*writable=*/false));
    target = t.target_path;
    EXPECT_EQ(target, "/run/shuttle-xfer/t1/1/in-a.txt");
    EXPECT_EQ(ReadInB(target), "from a");
    // Read-only: a write from B fails.
    absl::StatusOr<int> w = mounter_->OpenInVm("xb", target, O_WRONLY);
    EXPECT_FALSE(w.ok());
    if (w.ok()) close(*w);
    // Nothing else of A's /tmp is visible: the bind is the file alone.
    EXPECT_EQ(ReadInB("/run/shuttle-xfer/t1/1/dir/inner.txt"), "");
  }
  // The NameTransfer is gone: so is the bind.
  EXPECT_EQ(ReadInB(target), "");
}

TEST_F(NameTransferTest, WritableFileIsWrittenBack) {
  NameTransfer transfer(*mounter_, "xa", "xb", "/run/shuttle-xfer/t2");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Transferred t, transfer.Bind("/tmp/in-a.txt", 1, true));
  ASSERT_TRUE(WriteIn(b_, t.target_path, "written by b"));
  EXPECT_EQ(ReadIn(a_, "/tmp/in-a.txt"), "written by b");
}

TEST_F(NameTransferTest, DirectoryIsHandedOverWhole) {
  NameTransfer transfer(*mounter_, "xa", "xb", "/run/shuttle-xfer/t3");
  std::optional<std::string> named = transfer.Resolve("/", "tmp/dir");
  ASSERT_TRUE(named.has_value());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Transferred t, transfer.Bind(*named, 2, false));
  EXPECT_EQ(ReadInB(t.target_path + "/inner.txt"), "inner");
}

TEST_F(NameTransferTest, DotDotAndSymlinksStayInsideTheCallersVm) {
  NameTransfer transfer(*mounter_, "xa", "xb", "/run/shuttle-xfer/t4");
  // The host's secret, named by climbing out of A's root: resolves inside A, where the state
  // dir is an empty tmpfs, so it names nothing.
  EXPECT_EQ(transfer.Resolve("/tmp", absl::StrCat("../../../../../..", secret_)), std::nullopt);
  // A symlink in A pointing out of its root, absolutely and relatively.
  ASSERT_EQ(symlink(secret_.c_str(), InRoot(a_, "/tmp/abs-link").c_str()), 0);
  ASSERT_EQ(
      symlink(absl::StrCat("../../../../..", secret_).c_str(), InRoot(a_, "/tmp/rel-link").c_str()),
      0);
  EXPECT_EQ(transfer.Resolve("/tmp", "abs-link"), std::nullopt);
  EXPECT_EQ(transfer.Resolve("/tmp", "rel-link"), std::nullopt);
  EXPECT_FALSE(transfer.Bind("/tmp/abs-link", 1, false).ok());
  EXPECT_FALSE(transfer.Bind("/tmp/rel-link", 2, false).ok());
  // A symlink to a file inside A is that file.
  ASSERT_EQ(symlink("/tmp/in-a.txt", InRoot(a_, "/tmp/good-link").c_str()), 0);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Transferred t, transfer.Bind("/tmp/good-link", 3, false));
  EXPECT_EQ(ReadInB(t.target_path), "from a");
}

TEST_F(NameTransferTest, OnlyRegularFilesAndDirectories) {
  ASSERT_EQ(mkfifo(InRoot(a_, "/tmp/fifo").c_str(), 0666), 0);
  NameTransfer transfer(*mounter_, "xa", "xb", "/run/shuttle-xfer/t5");
  EXPECT_EQ(transfer.Resolve("/", "/tmp/fifo"), std::nullopt);
  EXPECT_FALSE(transfer.Bind("/tmp/fifo", 1, false).ok());
  EXPECT_EQ(transfer.Resolve("/", "/tmp/missing"), std::nullopt);
  EXPECT_EQ(transfer.Resolve("/", "--flag"), std::nullopt);
  // The VM's root, however named, is never handed over whole.
  EXPECT_EQ(transfer.Resolve("/tmp", "/"), std::nullopt);
  EXPECT_EQ(transfer.Resolve("/tmp", ".."), std::nullopt);
  EXPECT_EQ(transfer.Resolve("/tmp", "../../.."), std::nullopt);
  EXPECT_FALSE(transfer.Bind("/", 2, false).ok());
}

TEST_F(NameTransferTest, RacingSwapNeverExposesAnotherFile) {
  // A thread in A keeps swapping /tmp/swap between a file of A and a symlink out of A's root
  // while names are handed over: whatever is bound reads "from a", never the secret. Odd
  // attempts race the swapper; before each even attempt the swapper settles on the file, so the
  // test also shows that binding /tmp/swap works at all (a race that always loses, e.g. because
  // the renamed-over name is gone by the time it is mounted, would prove nothing).
  const std::string swap = InRoot(a_, "/tmp/swap");
  const std::string file_tmp = InRoot(a_, "/tmp/swap.file");
  const std::string link_tmp = InRoot(a_, "/tmp/swap.link");
  ASSERT_EQ(link(InRoot(a_, "/tmp/in-a.txt").c_str(), swap.c_str()), 0) << strerror(errno);
  std::atomic<bool> stop{false};
  std::atomic<bool> racing{false};
  std::atomic<int> settled_round{-1};  // The swapper's answer to `round`: /tmp/swap is the file.
  std::atomic<int> round{0};
  std::thread swapper([&] {
    auto to_file = [&] {
      (void)!unlink(file_tmp.c_str());
      (void)!link(InRoot(a_, "/tmp/in-a.txt").c_str(), file_tmp.c_str());
      (void)!rename(file_tmp.c_str(), swap.c_str());
    };
    for (int i = 0; !stop.load(); ++i) {
      if (!racing.load()) {
        const int r = round.load();
        if (settled_round.load() != r) {
          to_file();
          settled_round.store(r);
        }
        std::this_thread::yield();
        continue;
      }
      if (i % 2 == 0) {
        to_file();
      } else {
        (void)!symlink(secret_.c_str(), link_tmp.c_str());
        (void)!rename(link_tmp.c_str(), swap.c_str());
      }
    }
  });
  int bound_calm = 0;
  int bound_racing = 0;
  absl::Status last_error;
  for (int i = 0; i < 200; ++i) {
    const bool race = i % 2 == 1;
    if (!race) {
      racing.store(false);
      round.store(i);
      while (settled_round.load() != i) std::this_thread::yield();
    } else {
      racing.store(true);
    }
    NameTransfer transfer(*mounter_, "xa", "xb", absl::StrCat("/run/shuttle-xfer/race", i));
    absl::StatusOr<Transferred> t = transfer.Bind("/tmp/swap", 1, false);
    if (!t.ok()) {
      // Losing the race fails closed (the name vanished or left the root), never worse.
      if (!race) last_error = t.status();
      continue;
    }
    ++(race ? bound_racing : bound_calm);
    std::string seen = ReadInB(t->target_path);
    EXPECT_NE(seen, "SECRET") << "a racing swap exposed a file outside the caller's VM";
    EXPECT_EQ(seen, "from a");
  }
  stop.store(true);
  swapper.join();
  EXPECT_EQ(bound_calm, 100) << last_error;
  std::printf("racing attempts that bound the file: %d of 100\n", bound_racing);
}

}  // namespace
}  // namespace shuttle::agent::invoke
