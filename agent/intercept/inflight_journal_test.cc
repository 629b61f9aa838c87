#include "agent/intercept/inflight_journal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::intercept {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

class InflightJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shuttle-journal-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/run/shuttle/inflight";  // Parent directories are created.
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  std::string dir_;
  std::string path_;
};

TEST_F(InflightJournalTest, FreshJournalHasNoLeftovers) {
  auto j = InflightJournal::Open(path_, 8);
  ASSERT_THAT(j, IsOk());
  EXPECT_THAT((*j)->leftover(), IsEmpty());
  EXPECT_EQ((*j)->slot_count(), 8u);
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 64 + 8 * 16);
}

TEST_F(InflightJournalTest, RecordedIdsSurviveTheOwnerAndClearedOnesDoNot) {
  {
    auto j = InflightJournal::Open(path_, 4);
    ASSERT_THAT(j, IsOk());
    int a = (*j)->Record(111);
    int b = (*j)->Record(222);
    int c = (*j)->Record(333);
    EXPECT_EQ((*j)->in_use(), 3u);
    (*j)->Clear(b);
    EXPECT_NE(a, c);
    // Destroyed without clearing a and c: as if the agent died with them in flight.
  }
  auto j = InflightJournal::Open(path_, 4);
  ASSERT_THAT(j, IsOk());
  EXPECT_THAT((*j)->leftover(), UnorderedElementsAre(111u, 333u));
  (*j)->ForgetLeftover();
  EXPECT_THAT((*j)->leftover(), IsEmpty());
  // The file was reset: a third owner finds nothing.
  j->reset();
  auto k = InflightJournal::Open(path_, 4);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT((*k)->leftover(), IsEmpty());
}

TEST_F(InflightJournalTest, SurvivesSigkillOfTheOwner) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto j = InflightJournal::Open(path_, 4);
    if (!j.ok()) _exit(1);
    (*j)->Record(0xabcdef0123456789ull);
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(2);
    for (;;) pause();  // Killed here, journal still mapped and locked.
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  // While the owner lives, nobody else may open the journal.
  EXPECT_THAT(InflightJournal::Open(path_, 4),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("another running agent")));
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  auto j = InflightJournal::Open(path_, 16);  // A different size is fine.
  ASSERT_THAT(j, IsOk());
  EXPECT_THAT((*j)->leftover(), ElementsAre(0xabcdef0123456789ull));
  EXPECT_EQ((*j)->slot_count(), 16u);
}

TEST_F(InflightJournalTest, FullJournalReportsMinusOne) {
  auto j = InflightJournal::Open(path_, 2);
  ASSERT_THAT(j, IsOk());
  int a = (*j)->Record(1);
  int b = (*j)->Record(2);
  EXPECT_GE(a, 0);
  EXPECT_GE(b, 0);
  EXPECT_EQ((*j)->Record(3), -1);
  (*j)->Clear(-1);  // Harmless.
  (*j)->Clear(a);
  EXPECT_EQ((*j)->Record(4), a);
}

// Deferred answers free their slot on other threads; the loop reuses those slots once its own
// run out, and the file shows them free at once.
TEST_F(InflightJournalTest, SlotsReleasedByOtherThreadsAreReused) {
  constexpr int kSlots = 64;
  auto j = InflightJournal::Open(path_, kSlots);
  ASSERT_THAT(j, IsOk());
  std::vector<int> slots;
  for (int i = 0; i < kSlots; ++i) slots.push_back((*j)->Record(1000 + i));
  EXPECT_EQ((*j)->Record(1), -1);
  // Four threads release all of them at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kSlots; i += 4) (*j)->Release(slots[static_cast<size_t>(i)]);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ((*j)->in_use(), 0u);
  // A new owner sees nothing in flight: the file says every slot is free.
  std::set<int> again;
  for (int i = 0; i < kSlots; ++i) {
    int slot = (*j)->Record(2000 + i);
    ASSERT_GE(slot, 0) << i;
    again.insert(slot);
  }
  EXPECT_EQ(again.size(), static_cast<size_t>(kSlots)) << "each slot handed out once";
  EXPECT_EQ((*j)->Record(3), -1);
  (*j)->Release(*again.begin());
  (*j)->Release(-1);  // Harmless.
  EXPECT_EQ((*j)->in_use(), static_cast<size_t>(kSlots - 1));
  EXPECT_EQ((*j)->Record(4), *again.begin());
}

TEST_F(InflightJournalTest, ReleasedSlotIsFreeInTheFile) {
  {
    auto j = InflightJournal::Open(path_, 4);
    ASSERT_THAT(j, IsOk());
    int a = (*j)->Record(111);
    (*j)->Record(222);
    std::thread([&] { (*j)->Release(a); }).join();
  }
  auto j = InflightJournal::Open(path_, 4);
  ASSERT_THAT(j, IsOk());
  EXPECT_THAT((*j)->leftover(), ElementsAre(222u));
}

TEST_F(InflightJournalTest, GarbageFileIsIgnoredAndReset) {
  ASSERT_THAT(InflightJournal::Open(path_, 2), IsOk());  // Creates the directories.
  int fd = open(path_.c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  std::string junk(1000, '\x01');
  ASSERT_EQ(write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  close(fd);
  auto j = InflightJournal::Open(path_, 2);
  ASSERT_THAT(j, IsOk());
  EXPECT_THAT((*j)->leftover(), IsEmpty());
}

TEST_F(InflightJournalTest, BadArguments) {
  EXPECT_THAT(InflightJournal::Open(path_, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slots")));
  EXPECT_THAT(InflightJournal::Open(path_, InflightJournal::kMaxSlots + 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slots")));
  EXPECT_THAT(InflightJournal::Open("relative/path", 4),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("absolute")));
}

}  // namespace
}  // namespace shuttle::agent::intercept
