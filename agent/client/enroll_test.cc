#include "agent/client/enroll.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <grpcpp/security/credentials.h>

#include "agent/client/fake_controller.h"
#include "common/status_matchers.h"
#include "common/tls.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

using ::shuttle::agent::testing::FakeController;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class EnrollTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/enroll-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    paths_ = AgentPki(tmpl);
    absl::StatusOr<tls::CertAndKey> ca = tls::CreateCa("Test CA");
    ASSERT_THAT(ca, IsOk());
    ca_ = *ca;
    controller_.SetEnrollment(ca_, "good-token");
  }

  EnrollOptions Options(const std::string& token) {
    EnrollOptions options;
    options.controller_address = controller_.address();
    options.join_token = token;
    options.host_id = "host-1";
    options.credentials = grpc::InsecureChannelCredentials();
    options.timeout = absl::Seconds(10);
    return options;
  }

  FakeController controller_;
  tls::CertAndKey ca_;
  AgentPkiPaths paths_;
};

TEST_F(EnrollTest, StoresKeyCertificateAndCa) {
  EXPECT_FALSE(HasAgentCredentials(paths_));
  ASSERT_THAT(Enroll(Options("good-token"), paths_), IsOk());
  EXPECT_TRUE(HasAgentCredentials(paths_));

  struct stat st;
  ASSERT_EQ(::stat(paths_.key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(paths_.dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  const std::string cert = ReadFile(paths_.cert);
  EXPECT_EQ(ReadFile(paths_.ca), ca_.cert_pem);
  EXPECT_THAT(tls::VerifyCert(ca_.cert_pem, cert, tls::CertPurpose::kClient), IsOk());
  absl::StatusOr<tls::PeerIdentity> id = tls::IdentityFromCertPem(cert);
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->common_name, "host-1");
  EXPECT_EQ(id->role, tls::kRoleAgent);
  // What the agent connects with from now on.
  EXPECT_THAT(tls::LoadClientCredentials(paths_.ca, paths_.cert, paths_.key), IsOk());
}

TEST_F(EnrollTest, RefusedTokenIsOneClearLineAndWritesNothing) {
  absl::Status status = Enroll(Options("stale-token"), paths_);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kPermissionDenied,
                               HasSubstr("join token unknown or used")));
  EXPECT_THAT(std::string(status.message()),
              StartsWith("enrollment with controller " + controller_.address() + " failed: "));
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("\n")));
  EXPECT_FALSE(HasAgentCredentials(paths_));
}

TEST_F(EnrollTest, UnreachableControllerFailsWithinTheTimeout) {
  EnrollOptions options = Options("good-token");
  options.controller_address = "127.0.0.1:1";
  options.timeout = absl::Seconds(3);
  absl::Status status = Enroll(options, paths_);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("enrollment with controller 127.0.0.1:1"));
  EXPECT_FALSE(HasAgentCredentials(paths_));
}

TEST_F(EnrollTest, EmptyTokenIsRefusedLocally) {
  EXPECT_THAT(Enroll(Options(""), paths_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty join token")));
}

}  // namespace
}  // namespace shuttle::agent
