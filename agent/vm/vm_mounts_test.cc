// End-to-end tests of VmMounter with real VMs (VmManager, shuttle-vm-init): binds between two
// VMs and from the host, read-only and writable, escapes by ".." and symlinks, Unbind,
// idempotence and errors. Needs root (CI runs as root).
#include "agent/vm/vm_mounts.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/intercept/unique_fd.h"
#include "agent/vm/proc_util.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

using intercept::UniqueFd;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

class VmMountsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "vm_mounts_test creates VMs and mounts: run it as root";
    char state[] = "/var/tmp/shuttle-mounts-test.XXXXXX";
    ASSERT_NE(mkdtemp(state), nullptr) << strerror(errno);
    state_root_ = state;
    // Under the host's /tmp, which no VM sees (each has its own).
    char host[] = "/tmp/shuttle-mounts-host.XXXXXX";
    ASSERT_NE(mkdtemp(host), nullptr) << strerror(errno);
    host_dir_ = host;
    VmManagerOptions options;
    options.state_dir = state_root_ + "/vms";
    options.init_binary = SHUTTLE_VM_INIT_PATH;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(vms_, VmManager::Open(options));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(a_, vms_->Create("a"));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(b_, vms_->Create("b"));
    mounter_ = std::make_unique<VmMounter>(*vms_);
  }

  void TearDown() override {
    mounter_.reset();
    if (vms_ != nullptr) {
      for (const VmInfo& vm : vms_->List()) EXPECT_THAT(vms_->Destroy(vm.name), IsOk());
      vms_.reset();
    }
    // Nothing this test mounted may show on the host.
    std::ifstream mountinfo("/proc/self/mountinfo");
    for (std::string line; std::getline(mountinfo, line);) {
      EXPECT_EQ(line.find("/srv/shared"), std::string::npos) << "leaked to the host: " << line;
    }
    if (!state_root_.empty()) {
      EXPECT_THAT(vm_internal::RemoveTree(state_root_), IsOk());
    }
    if (!host_dir_.empty()) {
      EXPECT_THAT(vm_internal::RemoveTree(host_dir_), IsOk());
    }
  }

  // Writes `text` to `path` in `vm` (created 0644, truncated) through the VM's root.
  absl::Status WriteIn(const std::string& vm, const std::string& path, const std::string& text) {
    absl::StatusOr<int> fd = mounter_->OpenInVm(vm, path, O_WRONLY | O_CREAT | O_TRUNC);
    if (!fd.ok()) return fd.status();
    UniqueFd owned(*fd);
    if (write(owned.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      return absl::ErrnoToStatus(errno, "write");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ReadIn(const std::string& vm, const std::string& path) {
    absl::StatusOr<int> fd = mounter_->OpenInVm(vm, path, O_RDONLY);
    if (!fd.ok()) return fd.status();
    UniqueFd owned(*fd);
    std::string out;
    char buf[256];
    ssize_t n;
    while ((n = read(owned.get(), buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
  }

  // Makes a directory in `vm` (its parent must exist).
  void MkdirIn(const std::string& vm, const std::string& parent, const std::string& name) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(int dir, mounter_->OpenInVm(vm, parent, O_PATH | O_DIRECTORY));
    UniqueFd owned(dir);
    ASSERT_EQ(mkdirat(owned.get(), name.c_str(), 0755), 0) << strerror(errno);
  }

  void SymlinkIn(const std::string& vm, const std::string& parent, const std::string& name,
                 const std::string& target) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(int dir, mounter_->OpenInVm(vm, parent, O_PATH | O_DIRECTORY));
    UniqueFd owned(dir);
    ASSERT_EQ(symlinkat(target.c_str(), owned.get(), name.c_str()), 0) << strerror(errno);
  }

  // How many mounts VM `info` has on `mount_point` (field 5 of its mountinfo).
  static int MountsOn(const VmInfo& info, const std::string& mount_point) {
    std::ifstream in(absl::StrCat("/proc/", info.init_pid, "/mountinfo"));
    int count = 0;
    for (std::string line; std::getline(in, line);) {
      std::istringstream fields(line);
      std::string id, parent, dev, root, point;
      fields >> id >> parent >> dev >> root >> point;
      if (point == mount_point) ++count;
    }
    return count;
  }

  // What a real process in VM `info`'s mount namespace reads from `path`.
  static std::string CatInVm(const VmInfo& info, const std::string& path) {
    const std::string cmd = absl::StrCat("nsenter -t ", info.init_pid, " -m -- cat ", path);
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) return "<popen failed>";
    std::string out;
    char buf[256];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
    pclose(pipe);
    return out;
  }

  std::string state_root_;
  std::string host_dir_;
  std::unique_ptr<VmManager> vms_;
  VmInfo a_;
  VmInfo b_;
  std::unique_ptr<VmMounter> mounter_;
};

TEST_F(VmMountsTest, FileReadOnlyFromOneVmToAnother) {
  ASSERT_THAT(WriteIn("a", "/tmp/data", "hello"), IsOk());
  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/data",
                              .target_vm = "b",
                              .target_path = "/srv/shared/data",
                              .read_only = true}),
              IsOk());
  EXPECT_EQ(CatInVm(b_, "/srv/shared/data"), "hello");
  EXPECT_THAT(mounter_->OpenInVm("b", "/srv/shared/data", O_WRONLY),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr(strerror(EROFS))));
  // The same inode: a's writes show in b.
  ASSERT_THAT(WriteIn("a", "/tmp/data", "changed"), IsOk());
  EXPECT_EQ(CatInVm(b_, "/srv/shared/data"), "changed");
  EXPECT_EQ(MountsOn(b_, "/srv/shared/data"), 1);
  EXPECT_EQ(MountsOn(a_, "/srv/shared/data"), 0);
  // VM a's /tmp is not b's.
  EXPECT_THAT(ReadIn("b", "/tmp/data"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("'b'")));
}

TEST_F(VmMountsTest, DirectoryWritableAndReadOnly) {
  MkdirIn("a", "/tmp", "dir");
  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/dir",
                              .target_vm = "b",
                              .target_path = "/srv/shared/rw",
                              .read_only = false}),
              IsOk());
  ASSERT_THAT(WriteIn("b", "/srv/shared/rw/new", "from b"), IsOk());
  EXPECT_THAT(ReadIn("a", "/tmp/dir/new"), ::shuttle::testing::IsOkAndHolds("from b"));

  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/dir",
                              .target_vm = "b",
                              .target_path = "/srv/shared/ro",
                              .read_only = true}),
              IsOk());
  EXPECT_EQ(CatInVm(b_, "/srv/shared/ro/new"), "from b");
  EXPECT_THAT(WriteIn("b", "/srv/shared/ro/other", "x"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr(strerror(EROFS))));
  EXPECT_THAT(ReadIn("a", "/tmp/dir/other"), StatusIs(absl::StatusCode::kNotFound, ::testing::_));
  // Unbind removes the directory it created; the source directory keeps its contents.
  ASSERT_THAT(mounter_->Unbind("b", "/srv/shared/ro"), IsOk());
  EXPECT_THAT(mounter_->OpenInVm("b", "/srv/shared/ro", O_PATH),
              StatusIs(absl::StatusCode::kNotFound, ::testing::_));
  EXPECT_THAT(ReadIn("a", "/tmp/dir/new"), ::shuttle::testing::IsOkAndHolds("from b"));
}

TEST_F(VmMountsTest, HostFileIntoVm) {
  { std::ofstream(host_dir_ + "/config") << "host data"; }
  ASSERT_THAT(mounter_->Bind({.source_vm = kHostVm,
                              .source_path = host_dir_ + "/config",
                              .target_vm = "b",
                              .target_path = "/run/from-host/config"}),
              IsOk());
  EXPECT_EQ(CatInVm(b_, "/run/from-host/config"), "host data");
  EXPECT_THAT(mounter_->OpenInVm("b", "/run/from-host/config", O_WRONLY),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr(strerror(EROFS))));
  // The host's mount table is never the target.
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/etc/hostname",
                              .target_vm = kHostVm,
                              .target_path = host_dir_ + "/x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not the host")));
}

TEST_F(VmMountsTest, FifoSharedBetweenVms) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int tmp, mounter_->OpenInVm("a", "/tmp", O_PATH | O_DIRECTORY));
  UniqueFd tmp_fd(tmp);
  ASSERT_EQ(mkfifoat(tmp_fd.get(), "pipe", 0666), 0) << strerror(errno);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int source, mounter_->OpenInVm("a", "/tmp/pipe", O_PATH));
  UniqueFd source_fd(source);
  ASSERT_THAT(mounter_->BindFd("a", source_fd.get(), "b", "/run/app/pipe", /*read_only=*/false),
              IsOk());
  // A reader in a, a writer in b, one kernel pipe.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int reader,
                               mounter_->OpenInVm("a", "/tmp/pipe", O_RDONLY | O_NONBLOCK));
  UniqueFd reader_fd(reader);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int writer, mounter_->OpenInVm("b", "/run/app/pipe", O_WRONLY));
  UniqueFd writer_fd(writer);
  ASSERT_EQ(write(writer_fd.get(), "ping", 4), 4);
  char buf[8] = {};
  ASSERT_EQ(read(reader_fd.get(), buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "ping");
}

TEST_F(VmMountsTest, DotDotAndSymlinkEscapesAreRefused) {
  { std::ofstream(host_dir_ + "/secret") << "host secret"; }
  // ".." above the root, in the source and in the target.
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/../../.." + host_dir_ + "/secret",
                              .target_vm = "b",
                              .target_path = "/srv/shared/x"}),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("climbs above")));
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/etc/hostname",
                              .target_vm = "b",
                              .target_path = "/srv/../../x"}),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("climbs above")));
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/etc/hostname",
                              .target_vm = "b",
                              .target_path = "/srv/a/../x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'..'")));
  // A symlink in a pointing at the host's file resolves inside a (where it does not exist).
  SymlinkIn("a", "/tmp", "relative", "../../../../../.." + host_dir_ + "/secret");
  SymlinkIn("a", "/tmp", "absolute", host_dir_ + "/secret");
  for (const char* link : {"/tmp/relative", "/tmp/absolute"}) {
    EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                                .source_path = link,
                                .target_vm = "b",
                                .target_path = "/srv/shared/x"}),
                StatusIs(absl::StatusCode::kNotFound, HasSubstr(link)));
  }
  // When a has a file of that name, the link means a's file, never the host's.
  MkdirIn("a", "/tmp", host_dir_.substr(5));
  ASSERT_THAT(WriteIn("a", host_dir_ + "/secret", "a's own"), IsOk());
  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/relative",
                              .target_vm = "b",
                              .target_path = "/srv/shared/x"}),
              IsOk());
  EXPECT_EQ(CatInVm(b_, "/srv/shared/x"), "a's own");
  // /proc magic links (which would reach a process's real root) are refused.
  SymlinkIn("a", "/tmp", "magic", "/proc/1/root/etc/hostname");
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/magic",
                              .target_vm = "b",
                              .target_path = "/srv/shared/y"}),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("magic link")));
  // A symlink in the target VM cannot make the mount point land outside b either.
  SymlinkIn("b", "/tmp", "out", host_dir_);
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/etc/hostname",
                              .target_vm = "b",
                              .target_path = "/tmp/out/planted"}),
              StatusIs(absl::StatusCode::kNotFound, ::testing::_));
  struct stat st;
  EXPECT_NE(stat((host_dir_ + "/planted").c_str(), &st), 0) << "created on the host";
}

TEST_F(VmMountsTest, UnbindRemovesTheMountAndTheMountPointItCreated) {
  ASSERT_THAT(WriteIn("a", "/tmp/data", "hello"), IsOk());
  ASSERT_THAT(WriteIn("b", "/tmp/existing", "b's file"), IsOk());
  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/data",
                              .target_vm = "b",
                              .target_path = "/srv/shared/data"}),
              IsOk());
  ASSERT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/tmp/data",
                              .target_vm = "b",
                              .target_path = "/tmp/existing"}),
              IsOk());
  EXPECT_EQ(CatInVm(b_, "/tmp/existing"), "hello");

  ASSERT_THAT(mounter_->Unbind("b", "/srv/shared/data"), IsOk());
  EXPECT_EQ(MountsOn(b_, "/srv/shared/data"), 0);
  EXPECT_THAT(ReadIn("b", "/srv/shared/data"), StatusIs(absl::StatusCode::kNotFound, ::testing::_));
  // A mount point that was there before stays, uncovered.
  ASSERT_THAT(mounter_->Unbind("b", "/tmp/existing"), IsOk());
  EXPECT_THAT(ReadIn("b", "/tmp/existing"), ::shuttle::testing::IsOkAndHolds("b's file"));
  // The source is untouched; a second Unbind is a no-op.
  EXPECT_THAT(ReadIn("a", "/tmp/data"), ::shuttle::testing::IsOkAndHolds("hello"));
  EXPECT_THAT(mounter_->Unbind("b", "/srv/shared/data"), IsOk());
  EXPECT_THAT(mounter_->Unbind("b", "/tmp/existing"), IsOk());
  EXPECT_THAT(ReadIn("b", "/tmp/existing"), ::shuttle::testing::IsOkAndHolds("b's file"));
}

TEST_F(VmMountsTest, BindIsIdempotentAndReplacesADifferentMount) {
  ASSERT_THAT(WriteIn("a", "/tmp/one", "one"), IsOk());
  ASSERT_THAT(WriteIn("a", "/tmp/two", "two"), IsOk());
  BindSpec spec{.source_vm = "a",
                .source_path = "/tmp/one",
                .target_vm = "b",
                .target_path = "/srv/shared/f",
                .read_only = true};
  ASSERT_THAT(mounter_->Bind(spec), IsOk());
  ASSERT_THAT(mounter_->Bind(spec), IsOk());
  EXPECT_EQ(MountsOn(b_, "/srv/shared/f"), 1);
  // The other flag: replaced, still one mount, now writable.
  spec.read_only = false;
  ASSERT_THAT(mounter_->Bind(spec), IsOk());
  EXPECT_EQ(MountsOn(b_, "/srv/shared/f"), 1);
  ASSERT_THAT(WriteIn("b", "/srv/shared/f", "ONE"), IsOk());
  EXPECT_THAT(ReadIn("a", "/tmp/one"), ::shuttle::testing::IsOkAndHolds("ONE"));
  // Another source: replaced.
  spec.source_path = "/tmp/two";
  ASSERT_THAT(mounter_->Bind(spec), IsOk());
  EXPECT_EQ(MountsOn(b_, "/srv/shared/f"), 1);
  EXPECT_EQ(CatInVm(b_, "/srv/shared/f"), "two");
  // A directory cannot go onto a file mount point.
  MkdirIn("a", "/tmp", "dir");
  spec.source_path = "/tmp/dir";
  EXPECT_THAT(mounter_->Bind(spec),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a directory")));
}

TEST_F(VmMountsTest, UnknownVmsAndBadPaths) {
  EXPECT_THAT(mounter_->Bind({.source_vm = "nope",
                              .source_path = "/etc/hostname",
                              .target_vm = "b",
                              .target_path = "/srv/x"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/etc/hostname",
                              .target_vm = "nope",
                              .target_path = "/srv/x"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(mounter_->Unbind("nope", "/srv/x"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(mounter_->OpenInVm("nope", "/etc/hostname", O_RDONLY),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(mounter_->Bind({.source_vm = "a",
                              .source_path = "/no/such/file",
                              .target_vm = "b",
                              .target_path = "/srv/x"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/no/such/file")));
  EXPECT_THAT(
      mounter_->Bind(
          {.source_vm = "a", .source_path = "relative", .target_vm = "b", .target_path = "/srv/x"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("absolute")));
  EXPECT_THAT(mounter_->Bind(
                  {.source_vm = "a", .source_path = "/tmp", .target_vm = "b", .target_path = "/"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("root")));
}

}  // namespace
}  // namespace shuttle::agent
