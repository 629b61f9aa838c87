// TLS material for mTLS between agents, operators and the controller: a private CA, its server
// and client certificates (EC P-256, OpenSSL 3), CSR signing for agent enrollment, the
// controller's PKI directory, gRPC credentials built from it, and the peer identity (CN + role)
// read back from a verified client certificate.
//
// Identity model: a client certificate's subject CN is who the peer is (an operator name or an
// agent's host id) and its subject OU is the role ("admin", "viewer" or "agent"). Only the CA
// decides both: SignCsr ignores what a CSR asks for except its public key.
//
// Every function is thread-safe (no shared state besides OpenSSL's, which is thread-safe in
// OpenSSL 3). Errors are absl::Status values that name the file or input and carry OpenSSL's
// error strings; nothing throws.
#ifndef SHUTTLE_COMMON_TLS_H_
#define SHUTTLE_COMMON_TLS_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace shuttle::tls {

// Roles carried in a client certificate's subject OU.
inline constexpr char kRoleAdmin[] = "admin";
inline constexpr char kRoleViewer[] = "viewer";
inline constexpr char kRoleAgent[] = "agent";

// True for exactly kRoleAdmin, kRoleViewer and kRoleAgent.
bool IsKnownRole(absl::string_view role);

// Default lifetimes: the CA's, and every leaf's (server, admin, issued clients, agents).
inline constexpr absl::Duration kCaLifetime = absl::Hours(24 * 3650);
inline constexpr absl::Duration kLeafLifetime = absl::Hours(24 * 365);

// Files in a controller PKI directory (EnsureControllerPki). Keys are PKCS#8 PEM, mode 0600;
// certificates PEM, mode 0644; the directory itself is created 0700.
inline constexpr char kCaCertFile[] = "ca.pem";
inline constexpr char kCaKeyFile[] = "ca.key";
inline constexpr char kServerCertFile[] = "server.pem";
inline constexpr char kServerKeyFile[] = "server.key";
inline constexpr char kAdminCertFile[] = "admin.pem";
inline constexpr char kAdminKeyFile[] = "admin.key";
// Common names of what EnsureControllerPki creates.
inline constexpr char kCaCommonName[] = "Shuttle CA";
inline constexpr char kServerCommonName[] = "shuttle-controller";
inline constexpr char kAdminCommonName[] = "admin";

// A certificate and its private key, both PEM.
struct CertAndKey {
  std::string cert_pem;
  std::string key_pem;
};

// A PKCS#10 request and the private key it was made with, both PEM.
struct CsrAndKey {
  std::string csr_pem;
  std::string key_pem;
};

// How a certificate is issued. The defaults are right for production; tests move `now`.
struct IssueOptions {
  // Validity from `now`; zero means the kind's default (kCaLifetime or kLeafLifetime).
  absl::Duration lifetime = absl::ZeroDuration();
  // Time of issue; InfinitePast means the real clock. notBefore is `now - 1h`, so hosts whose
  // clocks lag a little accept a fresh certificate.
  absl::Time now = absl::InfinitePast();
};

// ---------------------------------------------------------------------------------------------
// Keys, certificates and CSRs in memory. Every certificate has a random 128-bit serial, a
// SHA-256 ECDSA (or RSA, for an RSA CA key) signature, subject and authority key identifiers.
// Common names must be 1..64 characters of [A-Za-z0-9._-] and not start with '.' or '-'.

// A new EC P-256 private key, PKCS#8 PEM.
absl::StatusOr<std::string> GenerateKeyPem();

// A new self-signed CA: basicConstraints critical CA:TRUE (pathlen 0), keyUsage critical
// keyCertSign + cRLSign.
absl::StatusOr<CertAndKey> CreateCa(absl::string_view common_name, const IssueOptions& opts = {});

// A new server key and certificate signed by `ca`, with serverAuth EKU and SANs DNS:localhost,
// IP:127.0.0.1, IP:::1, plus `extra_names` (each an IPv4/IPv6 literal becomes an IP SAN, anything
// else a DNS SAN; DNS names may start with "*." and otherwise hold [A-Za-z0-9.-]).
absl::StatusOr<CertAndKey> CreateServerCert(const CertAndKey& ca, absl::string_view common_name,
                                            const std::vector<std::string>& extra_names = {},
                                            const IssueOptions& opts = {});

// A new client key and certificate signed by `ca`: subject CN = `common_name`, OU = `role`
// (must satisfy IsKnownRole), clientAuth EKU.
absl::StatusOr<CertAndKey> CreateClientCert(const CertAndKey& ca, absl::string_view common_name,
                                            absl::string_view role, const IssueOptions& opts = {});

// Agent side of enrollment: a new EC P-256 key and a CSR for it, subject CN = `common_name`.
absl::StatusOr<CsrAndKey> CreateCsr(absl::string_view common_name);

// Controller side of enrollment. Verifies the CSR's self-signature (INVALID_ARGUMENT if it is
// malformed, over 16 KiB, unsigned, or its key is neither EC nor RSA >= 2048 bits) and returns a
// PEM client certificate for the CSR's public key with CN = `host_id`, OU = "agent", clientAuth
// EKU. Everything else the CSR asks for (subject, extensions) is ignored.
absl::StatusOr<std::string> SignCsr(const CertAndKey& ca, absl::string_view csr_pem,
                                    absl::string_view host_id, const IssueOptions& opts = {});

// What a certificate must be good for, in VerifyCert.
enum class CertPurpose { kAny, kServer, kClient };

// OK iff `cert_pem` chains to `ca_pem` now (X509_verify_cert), and, for kServer/kClient, its EKU
// allows that use. PERMISSION_DENIED with OpenSSL's reason ("certificate has expired", ...) when
// it does not; INVALID_ARGUMENT when either PEM does not parse.
absl::Status VerifyCert(absl::string_view ca_pem, absl::string_view cert_pem,
                        CertPurpose purpose = CertPurpose::kAny);

// Who a certificate names.
struct PeerIdentity {
  std::string common_name;  // subject CN; never empty
  std::string role;         // subject OU; empty if the certificate has none
};

// The subject CN and OU of a PEM certificate. Does not verify anything: pass only certificates
// that were verified (by the TLS handshake or VerifyCert). INVALID_ARGUMENT if it does not parse,
// has no CN, or has more than one CN or OU.
absl::StatusOr<PeerIdentity> IdentityFromCertPem(absl::string_view cert_pem);

// ---------------------------------------------------------------------------------------------
// Files.

// Reads a PEM certificate and its key; FAILED_PRECONDITION naming the files if the key does not
// belong to the certificate. Used, e.g., by the controller to load its CA for SignCsr.
absl::StatusOr<CertAndKey> LoadCertAndKey(const std::string& cert_path,
                                          const std::string& key_path);

// Makes sure `pki_dir` holds a usable controller PKI: ca.pem/ca.key, server.pem/server.key
// (CN kServerCommonName, SANs as CreateServerCert with `server_names`), admin.pem/admin.key
// (CN kAdminCommonName, role admin); the CA's CN is kCaCommonName.
// - Creates `pki_dir` (and missing parents) with mode 0700 and everything in it when absent.
// - A leaf pair that is entirely absent is (re)issued from the existing CA; so removing an
//   expired server.pem + server.key and calling again renews them.
// - Never overwrites or deletes a file. A half-present pair (a certificate without its key or
//   the reverse), a key that does not match its certificate, or a server/admin certificate that
//   does not verify against ca.pem (expired, other CA) is FAILED_PRECONDITION naming the file.
// - Each file is written atomically (temporary file, fsync, link into place, fsync directory).
// `server_names` only matters when server.pem is issued. Not safe to run concurrently on the
// same directory from several processes.
absl::Status EnsureControllerPki(const std::string& pki_dir,
                                 const std::vector<std::string>& server_names = {});

// Issues a client certificate from the CA in `pki_dir` (`shuttle-controller issue-cert`) and
// writes `<out_dir>/<name>.pem` (0644) and `<out_dir>/<name>.key` (0600), creating `out_dir` (0700)
// if it is missing. `name` is the CN and follows the common-name rules; `role` must satisfy
// IsKnownRole. ALREADY_EXISTS, writing nothing, if either output file exists.
absl::Status IssueClientCert(const std::string& pki_dir, absl::string_view role,
                             absl::string_view name, const std::string& out_dir);

// ---------------------------------------------------------------------------------------------
// gRPC.

// What the server asks of a client certificate.
enum class ClientCertMode {
  // Handshake fails without a client certificate signed by the CA (the default; agent API).
  kRequire,
  // A client may connect without a certificate (enrollment with a join token, bearer-token
  // admin clients); one that presents a certificate must present a valid one. Handlers then
  // decide, and PeerIdentityFromAuthContext says UNAUTHENTICATED for certificate-less peers.
  kOptional,
};

// Server credentials from `pki_dir`: server.pem/server.key as the identity, ca.pem as the only
// root that client certificates may chain to. Checks the files before gRPC sees them.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> LoadServerCredentials(
    const std::string& pki_dir, ClientCertMode mode = ClientCertMode::kRequire);

// Channel credentials: `ca_pem_path` is the only root the server may chain to; `cert_path` and
// `key_path` are the client identity, or both empty for a certificate-less client (kOptional).
// The server's certificate must name the host the channel dials (see CreateServerCert's SANs).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> LoadClientCredentials(
    const std::string& ca_pem_path, const std::string& cert_path, const std::string& key_path);

// The identity of an RPC's peer, from the certificate that the TLS handshake verified
// (`ctx->auth_context()` in a handler). UNAUTHENTICATED when the peer presented no certificate
// (or the channel is not TLS); INVALID_ARGUMENT when the certificate lacks a usable CN.
absl::StatusOr<PeerIdentity> PeerIdentityFromAuthContext(const grpc::AuthContext& auth);

}  // namespace shuttle::tls

#endif  // SHUTTLE_COMMON_TLS_H_
