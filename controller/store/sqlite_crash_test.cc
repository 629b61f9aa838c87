// Crash safety of the SQLite store: a child process writes policies as fast as it can and
// reports each committed write on a pipe; the parent SIGKILLs it mid-stream, several times, and
// checks after each kill that the file opens, passes integrity_check, holds every reported write,
// and is exactly consistent (histories contiguous, fleet versions 1..N each used once).
//
// A kill -9 loses the process, not the page cache, so this checks atomicity and WAL recovery
// (also with kills during checkpoints, which the child makes frequent), and that a write is in
// the WAL before the call returns. Power loss is covered by synchronous=FULL, not by this test.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/sqlite_store.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::controller {
namespace {

using ::shuttle::controller::testing::CheckConsistent;
using ::shuttle::controller::testing::MakeWrite;
using ::shuttle::controller::testing::TempDir;
using ::shuttle::testing::IsOk;

constexpr int kRounds = 8;
constexpr int kPolicies = 4;
constexpr int kMaxReportsBeforeKill = 150;
// The child stops on its own after this many writes; the parent kills it long before.
constexpr uint32_t kChildWriteLimit = 100'000;
constexpr absl::Duration kProgressTimeout = absl::Seconds(60);

// What the child reports after each committed write. 32 bytes: below PIPE_BUF, so each write()
// of one record is atomic and a kill can't leave half a record in the pipe.
struct Record {
  uint32_t round;
  uint32_t seq;
  uint32_t deleted;
  uint32_t unused;
  uint64_t revision;
  uint64_t fleet_version;
};
static_assert(sizeof(Record) == 32);

std::string PolicyName(uint32_t seq) { return absl::StrCat("p", seq % kPolicies); }
std::string Source(uint32_t round, uint32_t seq) {
  return absl::StrCat("round ", round, " write ", seq, "\n", std::string(seq % 700, '#'));
}

void ChildFail(const std::string& message) {
  std::string line = absl::StrCat("crash-test child: ", message, "\n");
  ssize_t unused = write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
  _exit(2);
}

// Runs in the forked child: never returns, never runs the parent's destructors or gtest.
[[noreturn]] void RunChild(const std::string& path, int report_fd, uint32_t round) {
  FakeClock clock(absl::FromUnixSeconds(1'700'000'000 + round));
  SqliteStoreOptions options;
  options.wal_autocheckpoint_pages = 4;  // Checkpoint often, so some kills land in one.
  auto store = SqliteStore::Open(path, clock, options);
  if (!store.ok()) ChildFail(store.status().ToString());
  for (uint32_t seq = 0; seq < kChildWriteLimit; ++seq) {
    Record record{};
    record.round = round;
    record.seq = seq;
    absl::StatusOr<v1::PolicyRevision> result;
    if (seq % 9 == 8) {
      result = (*store)->DeletePolicy(PolicyName(seq), "child");
      if (absl::IsNotFound(result.status())) continue;
      record.deleted = 1;
    } else {
      result = (*store)->PutPolicy(MakeWrite(PolicyName(seq), Source(round, seq)), nullptr);
    }
    if (!result.ok()) ChildFail(result.status().ToString());
    record.revision = result->revision();
    record.fleet_version = result->fleet_version();
    if (write(report_fd, &record, sizeof(record)) != sizeof(record)) ChildFail("report failed");
  }
  _exit(0);
}

// Reads one record, waiting at most until `deadline`. False at end of stream.
bool ReadRecord(int fd, absl::Time deadline, Record* record) {
  size_t got = 0;
  char* out = reinterpret_cast<char*>(record);
  while (got < sizeof(*record)) {
    pollfd pfd{fd, POLLIN, 0};
    int64_t wait_ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    int ready = poll(&pfd, 1, static_cast<int>(wait_ms));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      ADD_FAILURE() << "no progress from the child within " << kProgressTimeout;
      return false;
    }
    ssize_t n = read(fd, out + got, sizeof(*record) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      EXPECT_EQ(got, 0u) << "half a record in the pipe";
      return false;
    }
    got += static_cast<size_t>(n);
  }
  return true;
}

TEST(SqliteCrashTest, KillNineLosesNoCommittedWrite) {
  TempDir dir;
  const std::string path = dir.File("controller.db");
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<int> kill_after(1, kMaxReportsBeforeKill);
  std::vector<Record> committed;
  std::vector<std::string> names;
  names.reserve(kPolicies);
  for (int i = 0; i < kPolicies; ++i) names.push_back(absl::StrCat("p", i));

  for (uint32_t round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0) << strerror(errno);
    pid_t pid = fork();
    ASSERT_GE(pid, 0) << strerror(errno);
    if (pid == 0) {
      close(fds[0]);
      RunChild(path, fds[1], round);
    }
    close(fds[1]);

    // Let the child commit a random number of writes, then kill it mid-stream.
    const int target = kill_after(rng);
    const absl::Time deadline = absl::Now() + kProgressTimeout;
    const size_t before = committed.size();
    int reported = 0;
    Record record;
    while (reported < target && ReadRecord(fds[0], deadline, &record)) {
      committed.push_back(record);
      ++reported;
    }
    ASSERT_EQ(kill(pid, SIGKILL), 0) << strerror(errno);
    int wait_status = 0;
    ASSERT_EQ(waitpid(pid, &wait_status, 0), pid);
    // The child may have reported more commits before it died: they count too.
    while (ReadRecord(fds[0], absl::Now() + kProgressTimeout, &record)) committed.push_back(record);
    close(fds[0]);
    ASSERT_EQ(reported, target) << "the child stopped early (see its stderr)";
    ASSERT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL)
        << "child status " << wait_status;

    // Recover and check, as the next controller start would.
    FakeClock clock;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store,
                                 SqliteStore::Open(path, clock));
    ASSERT_THAT(store->CheckIntegrity(), IsOk());
    ASSERT_THAT(CheckConsistent(*store, names), IsOk());
    for (const Record& r : committed) {
      const std::string name = PolicyName(r.seq);
      auto got = store->GetPolicy(name, r.revision);
      ASSERT_THAT(got, IsOk()) << "lost committed write: round " << r.round << " seq " << r.seq;
      EXPECT_EQ(got->fleet_version(), r.fleet_version) << name << "@" << r.revision;
      EXPECT_EQ(got->deleted(), r.deleted == 1) << name << "@" << r.revision;
      if (r.deleted == 0) {
        EXPECT_EQ(got->source(), Source(r.round, r.seq)) << name << "@" << r.revision;
      }
    }
    // At most one write per kill was committed but not yet reported.
    SHUTTLE_ASSERT_OK_AND_ASSIGN(uint64_t fleet_version, store->FleetVersion());
    EXPECT_GE(fleet_version, committed.size());
    EXPECT_LE(fleet_version, committed.size() + round + 1);
    std::cout << "round " << round << ": killed after " << reported << " reports (+"
              << committed.size() - before - reported << " late), fleet version " << fleet_version
              << ", " << committed.size() << " reported in all\n";
  }
}

}  // namespace
}  // namespace shuttle::controller
