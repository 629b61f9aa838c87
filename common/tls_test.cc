#include "common/tls.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::tls {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

// ---- Helpers ---------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "shuttle_tls_test.XXXXXX";
    const char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string Sub(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

ino_t InodeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

X509Ptr ParsePem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509Ptr cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
  BIO_free(bio);
  EXPECT_NE(cert, nullptr);
  return cert;
}

std::string SubjectField(X509* cert, int nid) {
  char buf[256] = {};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), nid, buf, sizeof(buf)) < 0) {
    return "";
  }
  return buf;
}

bool ExtensionIsCritical(X509* cert, int nid) {
  const int index = X509_get_ext_by_NID(cert, nid, -1);
  return index >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, index)) == 1;
}

std::string SerialHex(X509* cert) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr);
  char* hex = BN_bn2hex(bn);
  std::string out = hex;
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

CertAndKey MustCreateCa(absl::string_view name = "Test CA") {
  absl::StatusOr<CertAndKey> ca = CreateCa(name);
  EXPECT_THAT(ca, IsOk());
  return ca.ok() ? *ca : CertAndKey{};
}

// ---- Certificates ----------------------------------------------------------------------------

TEST(TlsCertTest, CaHasCaExtensionsAndLongValidity) {
  CertAndKey ca = MustCreateCa();
  X509Ptr cert = ParsePem(ca.cert_pem);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_ca(cert.get()), 1);
  EXPECT_TRUE(ExtensionIsCritical(cert.get(), NID_basic_constraints));
  EXPECT_TRUE(ExtensionIsCritical(cert.get(), NID_key_usage));
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(SubjectField(cert.get(), NID_commonName), "Test CA");
  // Valid from about an hour ago for about ten years.
  int days = 0;
  int seconds = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &seconds, X509_get0_notBefore(cert.get()),
                           X509_get0_notAfter(cert.get())),
            1);
  EXPECT_EQ(days, 3650);
  time_t now = time(nullptr);
  EXPECT_EQ(X509_cmp_time(X509_get0_notBefore(cert.get()), &now), -1);
  time_t fifty_minutes_ago = now - time_t{50} * 60;
  EXPECT_EQ(X509_cmp_time(X509_get0_notBefore(cert.get()), &fifty_minutes_ago), -1);
  time_t seventy_minutes_ago = now - time_t{70} * 60;
  EXPECT_EQ(X509_cmp_time(X509_get0_notBefore(cert.get()), &seventy_minutes_ago), 1);
  // The CA verifies against itself.
  EXPECT_THAT(VerifyCert(ca.cert_pem, ca.cert_pem), IsOk());
}

TEST(TlsCertTest, ServerCertHasSansAndServerAuth) {
  CertAndKey ca = MustCreateCa();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      CertAndKey server,
      CreateServerCert(ca, "shuttle-controller", {"ctl.example.com", "10.1.2.3", "localhost"}));
  X509Ptr cert = ParsePem(server.cert_pem);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_host(cert.get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "ctl.example.com", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "evil.example.com", 0, 0, nullptr), 0);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "::1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "10.1.2.3", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "10.1.2.4", 0), 0);
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_TRUE(ExtensionIsCritical(cert.get(), NID_basic_constraints));

  EXPECT_THAT(VerifyCert(ca.cert_pem, server.cert_pem, CertPurpose::kServer), IsOk());
  EXPECT_THAT(VerifyCert(ca.cert_pem, server.cert_pem, CertPurpose::kClient),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("purpose")));
}

TEST(TlsCertTest, RejectsNamesThatCouldInjectOrEscape) {
  CertAndKey ca = MustCreateCa();
  EXPECT_THAT(CreateServerCert(ca, "ctl", {"a.example.com,IP:1.2.3.4"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a.example.com,IP")));
  EXPECT_THAT(CreateClientCert(ca, "../etc/passwd", kRoleAdmin),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("common name")));
  EXPECT_THAT(CreateClientCert(ca, "", kRoleAdmin),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("common name")));
  EXPECT_THAT(CreateClientCert(ca, std::string(65, 'a'), kRoleAdmin),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("common name")));
  EXPECT_THAT(CreateClientCert(ca, "bob", "root"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("root")));
}

TEST(TlsCertTest, ClientRoleAndCommonNameRoundTrip) {
  CertAndKey ca = MustCreateCa();
  for (const char* role : {kRoleAdmin, kRoleViewer, kRoleAgent}) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey client, CreateClientCert(ca, "alice", role));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(PeerIdentity id, IdentityFromCertPem(client.cert_pem));
    EXPECT_EQ(id.common_name, "alice");
    EXPECT_EQ(id.role, role);
    // Checked independently of IdentityFromCertPem: the role is the subject OU.
    X509Ptr cert = ParsePem(client.cert_pem);
    ASSERT_NE(cert, nullptr);
    EXPECT_EQ(SubjectField(cert.get(), NID_organizationalUnitName), role);
    EXPECT_THAT(VerifyCert(ca.cert_pem, client.cert_pem, CertPurpose::kClient), IsOk());
    EXPECT_THAT(VerifyCert(ca.cert_pem, client.cert_pem, CertPurpose::kServer),
                StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("purpose")));
  }
}

TEST(TlsCertTest, SerialsAreRandomAnd128Bits) {
  CertAndKey ca = MustCreateCa();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey a, CreateClientCert(ca, "a", kRoleViewer));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey b, CreateClientCert(ca, "a", kRoleViewer));
  X509Ptr ca_cert = ParsePem(a.cert_pem);
  X509Ptr b_cert = ParsePem(b.cert_pem);
  ASSERT_NE(ca_cert, nullptr);
  ASSERT_NE(b_cert, nullptr);
  const std::string serial_a = SerialHex(ca_cert.get());
  const std::string serial_b = SerialHex(b_cert.get());
  EXPECT_NE(serial_a, serial_b);
  EXPECT_LE(serial_a.size(), 32u);
  EXPECT_GE(serial_a.size(), 24u);  // Leading zero bytes are possible, 4 in a row are not.
}

TEST(TlsCertTest, ChainVerificationRejectsOtherCaAndExpired) {
  CertAndKey ca = MustCreateCa("CA one");
  CertAndKey other_ca = MustCreateCa("CA two");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey client, CreateClientCert(ca, "alice", kRoleAdmin));
  EXPECT_THAT(VerifyCert(ca.cert_pem, client.cert_pem), IsOk());
  EXPECT_THAT(VerifyCert(other_ca.cert_pem, client.cert_pem),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("issuer certificate")));

  IssueOptions long_ago;
  long_ago.now = absl::Now() - absl::Hours(24 * 30);
  long_ago.lifetime = absl::Hours(24);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey expired,
                               CreateClientCert(ca, "old", kRoleViewer, long_ago));
  EXPECT_THAT(VerifyCert(ca.cert_pem, expired.cert_pem),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("expired")));

  EXPECT_THAT(VerifyCert(ca.cert_pem, "not a certificate"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("PEM")));
}

TEST(TlsCertTest, IssuingNeedsTheMatchingCaKey) {
  CertAndKey ca = MustCreateCa("CA one");
  CertAndKey other_ca = MustCreateCa("CA two");
  CertAndKey mixed{ca.cert_pem, other_ca.key_pem};
  EXPECT_THAT(CreateClientCert(mixed, "alice", kRoleAdmin),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not belong")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey leaf, CreateClientCert(ca, "leaf", kRoleAdmin));
  EXPECT_THAT(CreateClientCert(leaf, "alice", kRoleAdmin),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a CA")));
}

// ---- CSRs ------------------------------------------------------------------------------------

TEST(TlsCsrTest, SignedCsrNamesTheHostIdAndKeepsTheKey) {
  CertAndKey ca = MustCreateCa();
  // The agent asks to be "admin"; the controller decides it is agent host-17.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CsrAndKey csr, CreateCsr("admin"));
  EXPECT_THAT(csr.csr_pem, HasSubstr("BEGIN CERTIFICATE REQUEST"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string cert_pem, SignCsr(ca, csr.csr_pem, "host-17"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(PeerIdentity id, IdentityFromCertPem(cert_pem));
  EXPECT_EQ(id.common_name, "host-17");
  EXPECT_EQ(id.role, kRoleAgent);
  EXPECT_THAT(VerifyCert(ca.cert_pem, cert_pem, CertPurpose::kClient), IsOk());

  // The certificate is for the CSR's key.
  TempDir dir;
  WriteAll(dir.Sub("agent.pem"), cert_pem);
  WriteAll(dir.Sub("agent.key"), csr.key_pem);
  EXPECT_THAT(LoadCertAndKey(dir.Sub("agent.pem"), dir.Sub("agent.key")), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CsrAndKey other, CreateCsr("x"));
  WriteAll(dir.Sub("other.key"), other.key_pem);
  EXPECT_THAT(LoadCertAndKey(dir.Sub("agent.pem"), dir.Sub("other.key")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("other.key")));
}

TEST(TlsCsrTest, RejectsTamperedAndMalformedCsrs) {
  CertAndKey ca = MustCreateCa();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CsrAndKey csr, CreateCsr("host-1"));
  EXPECT_THAT(SignCsr(ca, "garbage", "host-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("CSR")));
  EXPECT_THAT(SignCsr(ca, std::string(20000, 'A'), "host-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("larger")));
  EXPECT_THAT(SignCsr(ca, csr.csr_pem, "bad/host"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("common name")));

  // Change the subject after signing: the self-signature no longer covers the request.
  BIO* in = BIO_new_mem_buf(csr.csr_pem.data(), static_cast<int>(csr.csr_pem.size()));
  X509_REQ* req = PEM_read_bio_X509_REQ(in, nullptr, nullptr, nullptr);
  BIO_free(in);
  ASSERT_NE(req, nullptr);
  X509_NAME* evil = X509_NAME_new();
  X509_NAME_add_entry_by_NID(evil, NID_commonName, MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("evil"), -1, -1, 0);
  ASSERT_EQ(X509_REQ_set_subject_name(req, evil), 1);
  X509_NAME_free(evil);
  BIO* out = BIO_new(BIO_s_mem());
  ASSERT_EQ(PEM_write_bio_X509_REQ(out, req), 1);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out, &data);  // NOLINT(google-runtime-int)
  const std::string tampered(data, static_cast<size_t>(size));
  BIO_free(out);
  X509_REQ_free(req);
  ASSERT_NE(tampered, csr.csr_pem);
  EXPECT_THAT(SignCsr(ca, tampered, "host-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("signature does not verify")));
}

// ---- The controller PKI directory ------------------------------------------------------------

TEST(ControllerPkiTest, CreatesEverythingWithTightModes) {
  TempDir tmp;
  const std::string pki = tmp.Sub("data/pki");
  ASSERT_THAT(EnsureControllerPki(pki, {"ctl.example.com"}), IsOk());
  EXPECT_EQ(ModeOf(pki), 0700u);
  for (const char* key : {kCaKeyFile, kServerKeyFile, kAdminKeyFile}) {
    EXPECT_EQ(ModeOf(absl::StrCat(pki, "/", key)), 0600u) << key;
  }
  for (const char* cert : {kCaCertFile, kServerCertFile, kAdminCertFile}) {
    EXPECT_EQ(ModeOf(absl::StrCat(pki, "/", cert)), 0644u) << cert;
  }
  // Nothing else is left behind (no temporary files).
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(pki)) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("ca.pem", "ca.key", "server.pem", "server.key",
                                                     "admin.pem", "admin.key"));

  const std::string ca = ReadAll(pki + "/ca.pem");
  const std::string server = ReadAll(pki + "/server.pem");
  const std::string admin = ReadAll(pki + "/admin.pem");
  EXPECT_THAT(VerifyCert(ca, server, CertPurpose::kServer), IsOk());
  EXPECT_THAT(VerifyCert(ca, admin, CertPurpose::kClient), IsOk());
  X509Ptr server_cert = ParsePem(server);
  ASSERT_NE(server_cert, nullptr);
  EXPECT_EQ(X509_check_host(server_cert.get(), "ctl.example.com", 0, 0, nullptr), 1);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(PeerIdentity admin_id, IdentityFromCertPem(admin));
  EXPECT_EQ(admin_id.common_name, kAdminCommonName);
  EXPECT_EQ(admin_id.role, kRoleAdmin);
}

TEST(ControllerPkiTest, IsIdempotentAndNeverOverwrites) {
  TempDir tmp;
  const std::string pki = tmp.Sub("pki");
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());
  std::vector<std::pair<std::string, ino_t>> before;
  std::vector<std::string> contents;
  for (const char* f :
       {kCaCertFile, kCaKeyFile, kServerCertFile, kServerKeyFile, kAdminCertFile, kAdminKeyFile}) {
    const std::string path = absl::StrCat(pki, "/", f);
    before.emplace_back(path, InodeOf(path));
    contents.push_back(ReadAll(path));
  }
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());
  ASSERT_THAT(EnsureControllerPki(pki, {"new.example.com"}), IsOk());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(InodeOf(before[i].first), before[i].second) << before[i].first;
    EXPECT_EQ(ReadAll(before[i].first), contents[i]) << before[i].first;
  }
}

TEST(ControllerPkiTest, ReissuesAnAbsentLeafPairFromTheSameCa) {
  TempDir tmp;
  const std::string pki = tmp.Sub("pki");
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());
  const std::string ca = ReadAll(pki + "/ca.pem");
  const std::string old_server = ReadAll(pki + "/server.pem");
  ASSERT_EQ(unlink((pki + "/server.pem").c_str()), 0);
  ASSERT_EQ(unlink((pki + "/server.key").c_str()), 0);
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());
  const std::string new_server = ReadAll(pki + "/server.pem");
  EXPECT_NE(new_server, old_server);
  EXPECT_EQ(ReadAll(pki + "/ca.pem"), ca);
  EXPECT_THAT(VerifyCert(ca, new_server, CertPurpose::kServer), IsOk());
}

TEST(ControllerPkiTest, RefusesHalfPairsForeignAndMismatchedMaterial) {
  TempDir tmp;
  const std::string pki = tmp.Sub("pki");
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());

  // A certificate without its key.
  const std::string admin_key = ReadAll(pki + "/admin.key");
  ASSERT_EQ(unlink((pki + "/admin.key").c_str()), 0);
  EXPECT_THAT(EnsureControllerPki(pki),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("admin.key")));
  EXPECT_FALSE(std::filesystem::exists(pki + "/admin.key"));
  WriteAll(pki + "/admin.key", admin_key);
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());

  // A server certificate from another CA is reported and left alone.
  CertAndKey other_ca = MustCreateCa("Other CA");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey foreign, CreateServerCert(other_ca, "impostor"));
  WriteAll(pki + "/server.pem", foreign.cert_pem);
  WriteAll(pki + "/server.key", foreign.key_pem);
  EXPECT_THAT(EnsureControllerPki(pki),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr("server.pem"), HasSubstr("issuer"))));
  EXPECT_EQ(ReadAll(pki + "/server.pem"), foreign.cert_pem);

  // A key that is not the certificate's.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string stray_key, GenerateKeyPem());
  WriteAll(pki + "/server.key", stray_key);
  EXPECT_THAT(EnsureControllerPki(pki),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("server.key")));

  // Leaves without a CA.
  TempDir orphan;
  WriteAll(orphan.Sub("server.pem"), foreign.cert_pem);
  WriteAll(orphan.Sub("server.key"), foreign.key_pem);
  EXPECT_THAT(EnsureControllerPki(orphan.path()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ca.pem")));
  EXPECT_FALSE(std::filesystem::exists(orphan.Sub("ca.pem")));
}

TEST(ControllerPkiTest, IssueClientCertWritesOnceWithTheRole) {
  TempDir tmp;
  const std::string pki = tmp.Sub("pki");
  ASSERT_THAT(EnsureControllerPki(pki), IsOk());
  const std::string out = tmp.Sub("out");
  ASSERT_THAT(IssueClientCert(pki, kRoleViewer, "carol", out), IsOk());
  EXPECT_EQ(ModeOf(out + "/carol.key"), 0600u);
  const std::string cert = ReadAll(out + "/carol.pem");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(PeerIdentity id, IdentityFromCertPem(cert));
  EXPECT_EQ(id.common_name, "carol");
  EXPECT_EQ(id.role, kRoleViewer);
  EXPECT_THAT(VerifyCert(ReadAll(pki + "/ca.pem"), cert, CertPurpose::kClient), IsOk());

  EXPECT_THAT(IssueClientCert(pki, kRoleAdmin, "carol", out),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("carol.pem")));
  EXPECT_EQ(ReadAll(out + "/carol.pem"), cert);
  EXPECT_THAT(IssueClientCert(pki, "superuser", "dave", out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("superuser")));
  EXPECT_THAT(IssueClientCert(pki, kRoleAdmin, "../dave", out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("common name")));
  EXPECT_THAT(IssueClientCert(tmp.Sub("no-such-pki"), kRoleAdmin, "dave", out),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no-such-pki/ca.pem")));
}

TEST(ControllerPkiTest, CredentialErrorsNameTheFile) {
  TempDir tmp;
  EXPECT_THAT(LoadServerCredentials(tmp.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("ca.pem")));
  EXPECT_THAT(LoadClientCredentials(tmp.Sub("missing-ca.pem"), "", ""),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing-ca.pem")));
  WriteAll(tmp.Sub("bad.pem"), "hello");
  EXPECT_THAT(LoadClientCredentials(tmp.Sub("bad.pem"), "", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.pem")));
  EXPECT_THAT(LoadClientCredentials(tmp.Sub("bad.pem"), tmp.Sub("c.pem"), ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both")));
}

// ---- mTLS over gRPC --------------------------------------------------------------------------

// Answers every method with "<CN>|<role>" of the peer, or the error PeerIdentityFromAuthContext
// gives.
class WhoAmIService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Reactor(ctx);
  }

 private:
  class Reactor final : public grpc::ServerGenericBidiReactor {
   public:
    explicit Reactor(grpc::GenericCallbackServerContext* ctx) {
      absl::StatusOr<PeerIdentity> id = PeerIdentityFromAuthContext(*ctx->auth_context());
      if (!id.ok()) {
        Finish(ToGrpcStatus(id.status()));
        return;
      }
      grpc::Slice slice(absl::StrCat(id->common_name, "|", id->role));
      response_ = grpc::ByteBuffer(&slice, 1);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    grpc::ByteBuffer response_;
  };
};

struct CallResult {
  grpc::Status status;
  std::string body;
};

CallResult CallWhoAmI(int port, const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), creds);
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::Slice slice(std::string("ping"));
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  CallResult result;
  stub.UnaryCall(&ctx, "/shuttle.test.WhoAmI/Get", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status status) {
                   result.status = std::move(status);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (result.status.ok()) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response.Dump(&slices).ok());
    for (const grpc::Slice& s : slices) {
      result.body.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return result;
}

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_THAT(EnsureControllerPki(Pki()), IsOk()); }
  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown();
    }
  }

  std::string Pki() const { return tmp_.Sub("pki"); }

  void StartServer(ClientCertMode mode) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ServerCredentials> creds,
                                 LoadServerCredentials(Pki(), mode));
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", creds, &port_);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  std::shared_ptr<grpc::ChannelCredentials> Creds(const std::string& cert, const std::string& key,
                                                  const std::string& ca = "") {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        LoadClientCredentials(ca.empty() ? Pki() + "/ca.pem" : ca, cert, key);
    EXPECT_THAT(creds, IsOk());
    return creds.ok() ? *creds : nullptr;
  }

  TempDir tmp_;
  WhoAmIService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(MtlsTest, AcceptsCaIssuedClientsAndSeesTheirIdentity) {
  StartServer(ClientCertMode::kRequire);
  CallResult admin = CallWhoAmI(port_, Creds(Pki() + "/admin.pem", Pki() + "/admin.key"));
  ASSERT_TRUE(admin.status.ok()) << admin.status.error_message();
  EXPECT_EQ(admin.body, "admin|admin");

  ASSERT_THAT(IssueClientCert(Pki(), kRoleViewer, "vic", tmp_.Sub("clients")), IsOk());
  CallResult viewer =
      CallWhoAmI(port_, Creds(tmp_.Sub("clients/vic.pem"), tmp_.Sub("clients/vic.key")));
  ASSERT_TRUE(viewer.status.ok()) << viewer.status.error_message();
  EXPECT_EQ(viewer.body, "vic|viewer");
}

TEST_F(MtlsTest, RefusesClientsOfAnotherCaAndClientsWithoutCertificate) {
  StartServer(ClientCertMode::kRequire);
  // Another CA, with a client certificate that claims to be admin.
  CertAndKey other_ca = MustCreateCa("Other CA");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey impostor,
                               CreateClientCert(other_ca, "admin", kRoleAdmin));
  WriteAll(tmp_.Sub("impostor.pem"), impostor.cert_pem);
  WriteAll(tmp_.Sub("impostor.key"), impostor.key_pem);
  CallResult foreign = CallWhoAmI(port_, Creds(tmp_.Sub("impostor.pem"), tmp_.Sub("impostor.key")));
  EXPECT_EQ(foreign.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << foreign.status.error_message();

  CallResult anonymous = CallWhoAmI(port_, Creds("", ""));
  EXPECT_EQ(anonymous.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << anonymous.status.error_message();

  // A client that trusts another CA does not accept the server either.
  WriteAll(tmp_.Sub("other-ca.pem"), other_ca.cert_pem);
  CallResult distrustful = CallWhoAmI(
      port_, Creds(Pki() + "/admin.pem", Pki() + "/admin.key", tmp_.Sub("other-ca.pem")));
  EXPECT_EQ(distrustful.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << distrustful.status.error_message();
}

TEST_F(MtlsTest, OptionalModeLetsAnonymousInAsUnauthenticated) {
  StartServer(ClientCertMode::kOptional);
  CallResult anonymous = CallWhoAmI(port_, Creds("", ""));
  EXPECT_EQ(anonymous.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << anonymous.status.error_message();
  CallResult admin = CallWhoAmI(port_, Creds(Pki() + "/admin.pem", Pki() + "/admin.key"));
  ASSERT_TRUE(admin.status.ok()) << admin.status.error_message();
  EXPECT_EQ(admin.body, "admin|admin");

  // Optional does not mean unchecked: a certificate from another CA is still refused.
  CertAndKey other_ca = MustCreateCa("Other CA");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CertAndKey impostor,
                               CreateClientCert(other_ca, "admin", kRoleAdmin));
  WriteAll(tmp_.Sub("impostor.pem"), impostor.cert_pem);
  WriteAll(tmp_.Sub("impostor.key"), impostor.key_pem);
  CallResult foreign = CallWhoAmI(port_, Creds(tmp_.Sub("impostor.pem"), tmp_.Sub("impostor.key")));
  EXPECT_EQ(foreign.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << foreign.status.error_message();
}

}  // namespace
}  // namespace shuttle::tls
