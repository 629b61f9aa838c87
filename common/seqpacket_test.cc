#include "common/seqpacket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "shuttle/v1/local.pb.h"

namespace shuttle {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

class SeqpacketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair_), 0);
  }
  void TearDown() override {
    ::close(pair_[0]);
    ::close(pair_[1]);
  }
  int pair_[2];
};

TEST_F(SeqpacketTest, MessageAndDescriptorsRoundTrip) {
  v1::LocalRequest request;
  request.mutable_run()->set_vm("web");
  request.mutable_run()->add_argv("/bin/true");
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  ASSERT_THAT(SendMessage(pair_[0], request, {pipe_fds[1]}), IsOk());
  ::close(pipe_fds[1]);

  v1::LocalRequest received;
  std::vector<int> fds;
  ASSERT_THAT(ReceiveMessage(pair_[1], &received, &fds, 3), IsOk());
  EXPECT_EQ(received.run().vm(), "web");
  ASSERT_EQ(fds.size(), 1u);
  // The received descriptor is the pipe's write end: what we write arrives at the read end.
  ASSERT_EQ(::write(fds[0], "x", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(pipe_fds[0], &c, 1), 1);
  EXPECT_EQ(c, 'x');
  ::close(fds[0]);
  ::close(pipe_fds[0]);
}

TEST_F(SeqpacketTest, EmptyMessageIsNotMistakenForClose) {
  v1::LocalRequest request;
  request.mutable_vm_list();  // Serializes to a few bytes; an empty oneof would be 0 bytes.
  v1::LocalResponse empty;    // 0 bytes serialized.
  ASSERT_THAT(SendMessage(pair_[0], empty), IsOk());
  v1::LocalResponse received;
  std::vector<int> fds;
  EXPECT_THAT(ReceiveMessage(pair_[1], &received, &fds, 0), IsOk());
}

TEST_F(SeqpacketTest, TooManyDescriptorsAreRefusedAndClosed) {
  v1::LocalRequest request;
  request.mutable_vm_list();
  ASSERT_THAT(SendMessage(pair_[0], request, {0, 1, 2}), IsOk());
  v1::LocalRequest received;
  std::vector<int> fds;
  EXPECT_THAT(ReceiveMessage(pair_[1], &received, &fds, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("descriptors")));
  EXPECT_TRUE(fds.empty());
}

TEST_F(SeqpacketTest, GarbageIsInvalidArgument) {
  const char garbage[] = "\xff\xff\xff\xff\xff";
  ASSERT_EQ(::send(pair_[0], garbage, sizeof(garbage), 0), static_cast<ssize_t>(sizeof(garbage)));
  v1::LocalRequest received;
  std::vector<int> fds;
  EXPECT_THAT(ReceiveMessage(pair_[1], &received, &fds, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("malformed")));
}

TEST_F(SeqpacketTest, PeerCloseIsNotFound) {
  ::close(pair_[0]);
  pair_[0] = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // Keep TearDown's close valid.
  v1::LocalRequest received;
  std::vector<int> fds;
  EXPECT_THAT(ReceiveMessage(pair_[1], &received, &fds, 0),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("closed")));
}

TEST(ConnectSeqpacket, MissingSocketNamesPathAndHint) {
  EXPECT_THAT(ConnectSeqpacket("/nonexistent/agent.sock"),
              StatusIs(absl::StatusCode::kUnavailable,
                       HasSubstr("/nonexistent/agent.sock: No such file or directory")));
}

}  // namespace
}  // namespace shuttle
