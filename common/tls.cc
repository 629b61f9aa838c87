#include "common/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpc/grpc_security_constants.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::tls {
namespace {

// ---- OpenSSL ownership and errors ------------------------------------------------------------

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter<T, Free>>;

using BioPtr = OpenSslPtr<BIO, BIO_free_all>;
using EvpPkeyPtr = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using X509Ptr = OpenSslPtr<X509, X509_free>;
using X509ReqPtr = OpenSslPtr<X509_REQ, X509_REQ_free>;
using X509NamePtr = OpenSslPtr<X509_NAME, X509_NAME_free>;
using X509ExtensionPtr = OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using X509StorePtr = OpenSslPtr<X509_STORE, X509_STORE_free>;
using X509StoreCtxPtr = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using BignumPtr = OpenSslPtr<BIGNUM, BN_free>;
using GeneralNamesPtr = OpenSslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using GeneralNamePtr = OpenSslPtr<GENERAL_NAME, GENERAL_NAME_free>;
using Asn1OctetStringPtr = OpenSslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using Asn1Ia5StringPtr = OpenSslPtr<ASN1_IA5STRING, ASN1_IA5STRING_free>;

constexpr size_t kMaxPemSize = size_t{1} << 20;  // Far above any certificate or key we handle.
constexpr size_t kMaxCsrSize = size_t{16} * 1024;
constexpr size_t kMaxCommonNameLength = 64;  // ub-common-name in RFC 5280.
constexpr int kMinRsaBits = 2048;
constexpr mode_t kKeyMode = 0600;
constexpr mode_t kCertMode = 0644;
constexpr mode_t kDirMode = 0700;

// Empties this thread's OpenSSL error queue into one string (ERR_error_string_n per entry).
std::string DrainOpenSslErrors() {
  std::string out;
  char buf[256];
  for (auto e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out.empty() ? std::string("no OpenSSL error reported") : out;
}

absl::Status OpenSslError(absl::StatusCode code, absl::string_view what) {
  return absl::Status(code, absl::StrCat(what, ": ", DrainOpenSslErrors()));
}

// Refuses to read encrypted PEM keys instead of prompting on the terminal (the default).
int NoPassword(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

absl::StatusOr<BioPtr> ReadOnlyBio(absl::string_view data, absl::string_view what) {
  if (data.size() > kMaxPemSize) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": larger than ", kMaxPemSize, " bytes"));
  }
  BioPtr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (bio == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, what);
  }
  return bio;
}

absl::StatusOr<X509Ptr> ParseCert(absl::string_view pem, absl::string_view what) {
  ERR_clear_error();
  SHUTTLE_ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem, what));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr));
  if (cert == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(what, ": not a PEM certificate"));
  }
  return cert;
}

absl::StatusOr<EvpPkeyPtr> ParseKey(absl::string_view pem, absl::string_view what) {
  ERR_clear_error();
  SHUTTLE_ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem, what));
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(what, ": not an unencrypted PEM private key"));
  }
  return key;
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  const auto size = BIO_get_mem_data(bio, &data);
  return std::string(data, size > 0 ? static_cast<size_t>(size) : 0);
}

absl::StatusOr<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "writing certificate PEM");
  }
  return BioContents(bio.get());
}

absl::StatusOr<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "writing private key PEM");
  }
  return BioContents(bio.get());
}

absl::StatusOr<EvpPkeyPtr> GenerateKey() {
  ERR_clear_error();
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "generating EC P-256 key");
  }
  return key;
}

// ---- Names -----------------------------------------------------------------------------------

bool IsLeafNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

absl::Status ValidateLeafCommonName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxCommonNameLength) {
    return absl::InvalidArgumentError(absl::StrCat("common name \"", name, "\" must have 1 to ",
                                                   kMaxCommonNameLength, " characters"));
  }
  if (name.front() == '.' || name.front() == '-') {
    return absl::InvalidArgumentError(
        absl::StrCat("common name \"", name, "\" must not start with '.' or '-'"));
  }
  for (char c : name) {
    if (!IsLeafNameChar(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("common name \"", name, "\" may only hold [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCaCommonName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxCommonNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA common name must have 1 to ", kMaxCommonNameLength, " characters"));
  }
  for (char c : name) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError("CA common name must be printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateDnsName(absl::string_view name) {
  absl::string_view rest = name;
  if (rest.substr(0, 2) == "*.") {
    rest.remove_prefix(2);
  }
  bool ok = !rest.empty() && rest.size() <= 253 && rest.front() != '.' && rest.front() != '-';
  for (char c : rest) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("server name \"", name, "\" is neither an IP address nor a DNS name"));
  }
  return absl::OkStatus();
}

// ---- Certificate building --------------------------------------------------------------------

enum class CertKind { kCa, kServer, kClient };

absl::Status AddNameEntry(X509_NAME* name, int nid, absl::string_view value) {
  if (X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(value.data()),
                                 static_cast<int>(value.size()), -1, 0) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("setting subject ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509ExtensionPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("adding extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

// Builds the SAN extension structurally (not from a config string), so a name can't smuggle in
// extra entries.
absl::Status AddSubjectAltNames(X509* cert, const std::vector<std::string>& names) {
  GeneralNamesPtr gens(sk_GENERAL_NAME_new_null());
  if (gens == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocating SANs");
  }
  for (const std::string& name : names) {
    GeneralNamePtr gen(GENERAL_NAME_new());
    if (gen == nullptr) {
      return OpenSslError(absl::StatusCode::kInternal, "allocating SAN");
    }
    unsigned char ip[16];
    int ip_len = 0;
    if (inet_pton(AF_INET, name.c_str(), ip) == 1) {
      ip_len = 4;
    } else if (inet_pton(AF_INET6, name.c_str(), ip) == 1) {
      ip_len = 16;
    }
    if (ip_len > 0) {
      Asn1OctetStringPtr octets(ASN1_OCTET_STRING_new());
      if (octets == nullptr || ASN1_OCTET_STRING_set(octets.get(), ip, ip_len) != 1) {
        return OpenSslError(absl::StatusCode::kInternal, absl::StrCat("SAN IP:", name));
      }
      GENERAL_NAME_set0_value(gen.get(), GEN_IPADD, octets.release());
    } else {
      SHUTTLE_RETURN_IF_ERROR(ValidateDnsName(name));
      Asn1Ia5StringPtr dns(ASN1_IA5STRING_new());
      if (dns == nullptr ||
          ASN1_STRING_set(dns.get(), name.data(), static_cast<int>(name.size())) != 1) {
        return OpenSslError(absl::StatusCode::kInternal, absl::StrCat("SAN DNS:", name));
      }
      GENERAL_NAME_set0_value(gen.get(), GEN_DNS, dns.release());
    }
    GENERAL_NAME* raw = gen.release();
    if (sk_GENERAL_NAME_push(gens.get(), raw) == 0) {  // On success `gens` owns `raw`.
      GENERAL_NAME_free(raw);
      return OpenSslError(absl::StatusCode::kInternal, "adding SAN");
    }
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, gens.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "adding subjectAltName");
  }
  return absl::OkStatus();
}

absl::Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];  // 128 bits; positive as a big-endian unsigned number.
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "RAND_bytes for serial number");
  }
  BignumPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "setting serial number");
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* cert, CertKind kind, const IssueOptions& opts) {
  const absl::Time now = opts.now == absl::InfinitePast() ? absl::Now() : opts.now;
  absl::Duration lifetime = opts.lifetime;
  if (lifetime == absl::ZeroDuration()) {
    lifetime = kind == CertKind::kCa ? kCaLifetime : kLeafLifetime;
  }
  if (lifetime < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("negative lifetime");
  }
  if (ASN1_TIME_set(X509_getm_notBefore(cert), absl::ToTimeT(now - absl::Hours(1))) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert), absl::ToTimeT(now + lifetime)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "setting validity");
  }
  return absl::OkStatus();
}

// Issues a certificate of `kind` for `subject_key`, signed by `issuer_key` and named after
// `issuer_cert` (nullptr: self-signed, so `issuer_key` must be the subject's).
absl::StatusOr<std::string> BuildCert(CertKind kind, EVP_PKEY* subject_key,
                                      absl::string_view common_name, absl::string_view role,
                                      const std::vector<std::string>& san_names, X509* issuer_cert,
                                      EVP_PKEY* issuer_key, const IssueOptions& opts) {
  ERR_clear_error();
  X509Ptr cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "allocating certificate");
  }
  SHUTTLE_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  SHUTTLE_RETURN_IF_ERROR(SetValidity(cert.get(), kind, opts));

  X509NamePtr subject(X509_NAME_new());
  if (subject == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocating name");
  }
  if (!role.empty()) {
    SHUTTLE_RETURN_IF_ERROR(AddNameEntry(subject.get(), NID_organizationalUnitName, role));
  }
  SHUTTLE_RETURN_IF_ERROR(AddNameEntry(subject.get(), NID_commonName, common_name));
  if (X509_set_subject_name(cert.get(), subject.get()) != 1 ||
      X509_set_issuer_name(cert.get(), issuer_cert != nullptr ? X509_get_subject_name(issuer_cert)
                                                              : subject.get()) != 1 ||
      X509_set_pubkey(cert.get(), subject_key) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "setting names and public key");
  }

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer_cert != nullptr ? issuer_cert : cert.get(), cert.get(), nullptr,
                 nullptr, 0);
  X509* c = cert.get();
  if (kind == CertKind::kCa) {
    // pathlen:0: this CA signs leaves only, never another CA.
    SHUTTLE_RETURN_IF_ERROR(
        AddExtension(c, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_subject_key_identifier, "hash"));
  } else {
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_basic_constraints, "critical,CA:FALSE"));
    // keyEncipherment only matters for RSA key transport; EC keys only sign (ECDHE).
    const bool rsa = EVP_PKEY_get_base_id(subject_key) == EVP_PKEY_RSA;
    SHUTTLE_RETURN_IF_ERROR(AddExtension(
        c, &ctx, NID_key_usage,
        rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature"));
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_ext_key_usage,
                                         kind == CertKind::kServer ? "serverAuth" : "clientAuth"));
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_subject_key_identifier, "hash"));
    SHUTTLE_RETURN_IF_ERROR(AddExtension(c, &ctx, NID_authority_key_identifier, "keyid"));
    if (!san_names.empty()) {
      SHUTTLE_RETURN_IF_ERROR(AddSubjectAltNames(c, san_names));
    }
  }

  if (X509_sign(c, issuer_key, EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("signing certificate for \"", common_name, "\""));
  }
  return CertToPem(c);
}

struct ParsedCa {
  X509Ptr cert;
  EvpPkeyPtr key;
};

absl::StatusOr<ParsedCa> ParseCa(const CertAndKey& ca) {
  ParsedCa out;
  SHUTTLE_ASSIGN_OR_RETURN(out.cert, ParseCert(ca.cert_pem, "CA certificate"));
  SHUTTLE_ASSIGN_OR_RETURN(out.key, ParseKey(ca.key_pem, "CA key"));
  if (X509_check_private_key(out.cert.get(), out.key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "CA key does not belong to the CA certificate");
  }
  if (X509_check_ca(out.cert.get()) < 1) {
    return absl::InvalidArgumentError("CA certificate is not a CA (basicConstraints CA:TRUE)");
  }
  return out;
}

absl::StatusOr<CertAndKey> IssueLeafWithNewKey(const CertAndKey& ca, CertKind kind,
                                               absl::string_view common_name,
                                               absl::string_view role,
                                               const std::vector<std::string>& san_names,
                                               const IssueOptions& opts) {
  SHUTTLE_RETURN_IF_ERROR(ValidateLeafCommonName(common_name));
  SHUTTLE_ASSIGN_OR_RETURN(ParsedCa parsed, ParseCa(ca));
  SHUTTLE_ASSIGN_OR_RETURN(EvpPkeyPtr key, GenerateKey());
  CertAndKey out;
  SHUTTLE_ASSIGN_OR_RETURN(out.cert_pem, BuildCert(kind, key.get(), common_name, role, san_names,
                                                   parsed.cert.get(), parsed.key.get(), opts));
  SHUTTLE_ASSIGN_OR_RETURN(out.key_pem, KeyToPem(key.get()));
  return out;
}

absl::StatusOr<std::string> NameEntryUtf8(X509_NAME* name, int nid, absl::string_view what,
                                          bool* present) {
  *present = false;
  const int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) {
    return std::string();
  }
  if (X509_NAME_get_index_by_NID(name, nid, index) >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": subject has more than one ", OBJ_nid2sn(nid)));
  }
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* utf8 = nullptr;
  const int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(what, ": unreadable subject ", OBJ_nid2sn(nid)));
  }
  std::string value(reinterpret_cast<const char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  if (value.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": subject ", OBJ_nid2sn(nid), " holds a NUL byte"));
  }
  *present = true;
  return value;
}

absl::StatusOr<PeerIdentity> IdentityFromCert(X509* cert, absl::string_view what) {
  X509_NAME* subject = X509_get_subject_name(cert);
  PeerIdentity id;
  bool present = false;
  SHUTTLE_ASSIGN_OR_RETURN(id.common_name, NameEntryUtf8(subject, NID_commonName, what, &present));
  if (!present || id.common_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": subject has no common name"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(id.role,
                           NameEntryUtf8(subject, NID_organizationalUnitName, what, &present));
  return id;
}

absl::Status VerifyParsed(X509* ca, X509* cert, CertPurpose purpose, absl::string_view what) {
  ERR_clear_error();
  X509StorePtr store(X509_STORE_new());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (store == nullptr || ctx == nullptr || X509_STORE_add_cert(store.get(), ca) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, absl::StrCat(what, ": setting up verify"));
  }
  if (purpose != CertPurpose::kAny &&
      X509_STORE_CTX_set_purpose(ctx.get(), purpose == CertPurpose::kServer
                                                ? X509_PURPOSE_SSL_SERVER
                                                : X509_PURPOSE_SSL_CLIENT) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, absl::StrCat(what, ": setting purpose"));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::PermissionDeniedError(absl::StrCat(
        what, ": does not verify against the CA: ", X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

// ---- Files -----------------------------------------------------------------------------------

std::string JoinPath(absl::string_view dir, absl::string_view name) {
  if (dir.empty()) {
    return {name.data(), name.size()};
  }
  if (dir.back() == '/') {
    return absl::StrCat(dir, name);
  }
  return absl::StrCat(dir, "/", name);
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  if (slash == 0) {
    return "/";
  }
  return path.substr(0, slash);
}

absl::Status ErrnoError(int err, absl::string_view what) { return absl::ErrnoToStatus(err, what); }

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("opening ", path));
  }
  std::string out;
  char buf[8192];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int err = errno;
      close(fd);
      return ErrnoError(err, absl::StrCat("reading ", path));
    }
    if (n == 0) {
      break;
    }
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxPemSize) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxPemSize, " bytes"));
    }
  }
  close(fd);
  return out;
}

absl::StatusOr<bool> FileExists(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    return true;
  }
  if (errno == ENOENT) {
    return false;
  }
  return ErrnoError(errno, absl::StrCat("stat ", path));
}

// mkdir -p, new directories get `mode`.
absl::Status MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) {
    return absl::InvalidArgumentError("empty directory path");
  }
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') {
      continue;
    }
    const std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), mode) == 0 || errno == EEXIST) {
      continue;
    }
    return ErrnoError(errno, absl::StrCat("creating directory ", prefix));
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  return absl::OkStatus();
}

void WarnIfOthersCanRead(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    SHUTTLE_LOG(WARNING) << path << " is accessible by group or others (mode " << std::oct
                         << (st.st_mode & 0777) << std::dec << "); use 0700/0600";
  }
}

absl::Status FsyncDir(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("opening directory ", dir));
  }
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) {
    return ErrnoError(err, absl::StrCat("fsync ", dir));
  }
  return absl::OkStatus();
}

// Writes `data` to `path` atomically and never replaces an existing file: the data goes to a
// temporary file in the same directory, is fsynced, then hard-linked to `path` (link(2) fails
// with EEXIST instead of replacing, unlike rename(2)).
absl::Status WriteNewFileAtomically(const std::string& path, absl::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("creating temporary file for ", path));
  }
  auto fail = [&](int err, absl::string_view what) {
    close(fd);
    unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat(what, " ", path));
  };
  if (fchmod(fd, mode) != 0) {
    return fail(errno, "chmod");
  }
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail(errno, "writing");
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    return fail(errno, "fsync");
  }
  if (close(fd) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("closing ", path));
  }
  if (link(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(path, " already exists; not overwriting it"));
    }
    return ErrnoError(err, absl::StrCat("linking ", path));
  }
  unlink(tmp.c_str());
  return FsyncDir(DirName(path));
}

struct PairPaths {
  std::string cert;
  std::string key;
};

// Whether both files of a pair exist; FAILED_PRECONDITION if only one does.
absl::StatusOr<bool> PairExists(const PairPaths& pair) {
  SHUTTLE_ASSIGN_OR_RETURN(bool cert, FileExists(pair.cert));
  SHUTTLE_ASSIGN_OR_RETURN(bool key, FileExists(pair.key));
  if (cert != key) {
    return absl::FailedPreconditionError(
        absl::StrCat(cert ? pair.cert : pair.key, " exists but ", cert ? pair.key : pair.cert,
                     " does not; remove the one that exists to have both issued anew"));
  }
  return cert;
}

// Key first: a crash between the two leaves a key without a certificate, which PairExists
// reports instead of silently using.
absl::Status WritePair(const PairPaths& pair, const CertAndKey& material) {
  SHUTTLE_RETURN_IF_ERROR(WriteNewFileAtomically(pair.key, material.key_pem, kKeyMode));
  return WriteNewFileAtomically(pair.cert, material.cert_pem, kCertMode);
}

// Loads a leaf pair and checks that it chains to `ca` for `purpose` (and has `role`).
absl::Status CheckLeafPair(const PairPaths& pair, const CertAndKey& ca, CertPurpose purpose,
                           absl::string_view role) {
  WarnIfOthersCanRead(pair.key);
  SHUTTLE_ASSIGN_OR_RETURN(CertAndKey leaf, LoadCertAndKey(pair.cert, pair.key));
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr ca_cert, ParseCert(ca.cert_pem, "CA certificate"));
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr leaf_cert, ParseCert(leaf.cert_pem, pair.cert));
  absl::Status verified = VerifyParsed(ca_cert.get(), leaf_cert.get(), purpose, pair.cert);
  if (!verified.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(verified.message(), "; remove ", pair.cert,
                                                      " and ", pair.key,
                                                      " to have them issued anew"));
  }
  if (!role.empty()) {
    SHUTTLE_ASSIGN_OR_RETURN(PeerIdentity id, IdentityFromCertPem(leaf.cert_pem));
    if (id.role != role) {
      return absl::FailedPreconditionError(
          absl::StrCat(pair.cert, ": role is \"", id.role, "\", expected \"", role, "\""));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsKnownRole(absl::string_view role) {
  return role == kRoleAdmin || role == kRoleViewer || role == kRoleAgent;
}

absl::StatusOr<std::string> GenerateKeyPem() {
  SHUTTLE_ASSIGN_OR_RETURN(EvpPkeyPtr key, GenerateKey());
  return KeyToPem(key.get());
}

absl::StatusOr<CertAndKey> CreateCa(absl::string_view common_name, const IssueOptions& opts) {
  SHUTTLE_RETURN_IF_ERROR(ValidateCaCommonName(common_name));
  SHUTTLE_ASSIGN_OR_RETURN(EvpPkeyPtr key, GenerateKey());
  CertAndKey out;
  SHUTTLE_ASSIGN_OR_RETURN(out.cert_pem, BuildCert(CertKind::kCa, key.get(), common_name, "", {},
                                                   nullptr, key.get(), opts));
  SHUTTLE_ASSIGN_OR_RETURN(out.key_pem, KeyToPem(key.get()));
  return out;
}

absl::StatusOr<CertAndKey> CreateServerCert(const CertAndKey& ca, absl::string_view common_name,
                                            const std::vector<std::string>& extra_names,
                                            const IssueOptions& opts) {
  std::vector<std::string> names = {"localhost", "127.0.0.1", "::1"};
  for (const std::string& name : extra_names) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(name);
    }
  }
  return IssueLeafWithNewKey(ca, CertKind::kServer, common_name, "", names, opts);
}

absl::StatusOr<CertAndKey> CreateClientCert(const CertAndKey& ca, absl::string_view common_name,
                                            absl::string_view role, const IssueOptions& opts) {
  if (!IsKnownRole(role)) {
    return absl::InvalidArgumentError(
        absl::StrCat("role \"", role, "\" is not one of admin, viewer, agent"));
  }
  return IssueLeafWithNewKey(ca, CertKind::kClient, common_name, role, {}, opts);
}

absl::StatusOr<CsrAndKey> CreateCsr(absl::string_view common_name) {
  SHUTTLE_RETURN_IF_ERROR(ValidateLeafCommonName(common_name));
  SHUTTLE_ASSIGN_OR_RETURN(EvpPkeyPtr key, GenerateKey());
  X509ReqPtr req(X509_REQ_new());
  X509NamePtr subject(X509_NAME_new());
  if (req == nullptr || subject == nullptr ||
      X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "allocating CSR");
  }
  SHUTTLE_RETURN_IF_ERROR(AddNameEntry(subject.get(), NID_commonName, common_name));
  if (X509_REQ_set_subject_name(req.get(), subject.get()) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.get()) != 1 ||
      X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "signing CSR");
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "writing CSR PEM");
  }
  CsrAndKey out;
  out.csr_pem = BioContents(bio.get());
  SHUTTLE_ASSIGN_OR_RETURN(out.key_pem, KeyToPem(key.get()));
  return out;
}

absl::StatusOr<std::string> SignCsr(const CertAndKey& ca, absl::string_view csr_pem,
                                    absl::string_view host_id, const IssueOptions& opts) {
  SHUTTLE_RETURN_IF_ERROR(ValidateLeafCommonName(host_id));
  if (csr_pem.size() > kMaxCsrSize) {
    return absl::InvalidArgumentError(absl::StrCat("CSR larger than ", kMaxCsrSize, " bytes"));
  }
  ERR_clear_error();
  SHUTTLE_ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(csr_pem, "CSR"));
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, NoPassword, nullptr));
  if (req == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR: not a PEM certificate request");
  }
  EVP_PKEY* public_key = X509_REQ_get0_pubkey(req.get());
  if (public_key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR: unreadable public key");
  }
  if (X509_REQ_verify(req.get(), public_key) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR: signature does not verify");
  }
  const int type = EVP_PKEY_get_base_id(public_key);
  if (type == EVP_PKEY_RSA) {
    if (EVP_PKEY_get_bits(public_key) < kMinRsaBits) {
      return absl::InvalidArgumentError(absl::StrCat("CSR: RSA key has ",
                                                     EVP_PKEY_get_bits(public_key),
                                                     " bits; need at least ", kMinRsaBits));
    }
  } else if (type != EVP_PKEY_EC) {
    return absl::InvalidArgumentError("CSR: key is neither EC nor RSA");
  }
  SHUTTLE_ASSIGN_OR_RETURN(ParsedCa parsed, ParseCa(ca));
  return BuildCert(CertKind::kClient, public_key, host_id, kRoleAgent, {}, parsed.cert.get(),
                   parsed.key.get(), opts);
}

absl::Status VerifyCert(absl::string_view ca_pem, absl::string_view cert_pem, CertPurpose purpose) {
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr ca, ParseCert(ca_pem, "CA certificate"));
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem, "certificate"));
  return VerifyParsed(ca.get(), cert.get(), purpose, "certificate");
}

absl::StatusOr<PeerIdentity> IdentityFromCertPem(absl::string_view cert_pem) {
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem, "certificate"));
  return IdentityFromCert(cert.get(), "certificate");
}

absl::StatusOr<CertAndKey> LoadCertAndKey(const std::string& cert_path,
                                          const std::string& key_path) {
  CertAndKey out;
  SHUTTLE_ASSIGN_OR_RETURN(out.cert_pem, ReadFile(cert_path));
  SHUTTLE_ASSIGN_OR_RETURN(out.key_pem, ReadFile(key_path));
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(out.cert_pem, cert_path));
  SHUTTLE_ASSIGN_OR_RETURN(EvpPkeyPtr key, ParseKey(out.key_pem, key_path));
  ERR_clear_error();
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kFailedPrecondition,
                        absl::StrCat(key_path, " is not the key of ", cert_path));
  }
  return out;
}

absl::Status EnsureControllerPki(const std::string& pki_dir,
                                 const std::vector<std::string>& server_names) {
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(pki_dir, kDirMode));
  WarnIfOthersCanRead(pki_dir);
  const PairPaths ca_paths{JoinPath(pki_dir, kCaCertFile), JoinPath(pki_dir, kCaKeyFile)};
  const PairPaths server_paths{JoinPath(pki_dir, kServerCertFile),
                               JoinPath(pki_dir, kServerKeyFile)};
  const PairPaths admin_paths{JoinPath(pki_dir, kAdminCertFile), JoinPath(pki_dir, kAdminKeyFile)};

  SHUTTLE_ASSIGN_OR_RETURN(bool have_ca, PairExists(ca_paths));
  SHUTTLE_ASSIGN_OR_RETURN(bool have_server, PairExists(server_paths));
  SHUTTLE_ASSIGN_OR_RETURN(bool have_admin, PairExists(admin_paths));
  CertAndKey ca;
  if (have_ca) {
    WarnIfOthersCanRead(ca_paths.key);
    SHUTTLE_ASSIGN_OR_RETURN(ca, LoadCertAndKey(ca_paths.cert, ca_paths.key));
    SHUTTLE_ASSIGN_OR_RETURN(ParsedCa parsed, ParseCa(ca));
    absl::Status ca_ok =
        VerifyParsed(parsed.cert.get(), parsed.cert.get(), CertPurpose::kAny, ca_paths.cert);
    if (!ca_ok.ok()) {
      return absl::FailedPreconditionError(ca_ok.message());
    }
  } else {
    // Leaves without their CA could never be verified again; don't start a new CA beside them.
    if (have_server || have_admin) {
      return absl::FailedPreconditionError(absl::StrCat(
          pki_dir, " holds ", have_server ? server_paths.cert : admin_paths.cert, " but no ",
          kCaCertFile, "/", kCaKeyFile, "; restore the CA or empty the directory"));
    }
    SHUTTLE_ASSIGN_OR_RETURN(ca, CreateCa(kCaCommonName));
    SHUTTLE_RETURN_IF_ERROR(WritePair(ca_paths, ca));
    SHUTTLE_LOG(INFO) << "created CA " << ca_paths.cert;
  }

  if (have_server) {
    SHUTTLE_RETURN_IF_ERROR(CheckLeafPair(server_paths, ca, CertPurpose::kServer, ""));
  } else {
    SHUTTLE_ASSIGN_OR_RETURN(CertAndKey server,
                             CreateServerCert(ca, kServerCommonName, server_names));
    SHUTTLE_RETURN_IF_ERROR(WritePair(server_paths, server));
    SHUTTLE_LOG(INFO) << "issued server certificate " << server_paths.cert;
  }
  if (have_admin) {
    SHUTTLE_RETURN_IF_ERROR(CheckLeafPair(admin_paths, ca, CertPurpose::kClient, kRoleAdmin));
  } else {
    SHUTTLE_ASSIGN_OR_RETURN(CertAndKey admin, CreateClientCert(ca, kAdminCommonName, kRoleAdmin));
    SHUTTLE_RETURN_IF_ERROR(WritePair(admin_paths, admin));
    SHUTTLE_LOG(INFO) << "issued admin certificate " << admin_paths.cert;
  }
  return absl::OkStatus();
}

absl::Status IssueClientCert(const std::string& pki_dir, absl::string_view role,
                             absl::string_view name, const std::string& out_dir) {
  if (!IsKnownRole(role)) {
    return absl::InvalidArgumentError(
        absl::StrCat("role \"", role, "\" is not one of admin, viewer, agent"));
  }
  SHUTTLE_RETURN_IF_ERROR(ValidateLeafCommonName(name));
  SHUTTLE_ASSIGN_OR_RETURN(
      CertAndKey ca, LoadCertAndKey(JoinPath(pki_dir, kCaCertFile), JoinPath(pki_dir, kCaKeyFile)));
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(out_dir, kDirMode));
  const PairPaths out{JoinPath(out_dir, absl::StrCat(name, ".pem")),
                      JoinPath(out_dir, absl::StrCat(name, ".key"))};
  for (const std::string* path : {&out.cert, &out.key}) {
    SHUTTLE_ASSIGN_OR_RETURN(bool exists, FileExists(*path));
    if (exists) {
      return absl::AlreadyExistsError(absl::StrCat(*path, " already exists; not overwriting it"));
    }
  }
  SHUTTLE_ASSIGN_OR_RETURN(CertAndKey issued, CreateClientCert(ca, name, role));
  return WritePair(out, issued);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> LoadServerCredentials(
    const std::string& pki_dir, ClientCertMode mode) {
  const std::string ca_path = JoinPath(pki_dir, kCaCertFile);
  SHUTTLE_ASSIGN_OR_RETURN(std::string ca_pem, ReadFile(ca_path));
  SHUTTLE_RETURN_IF_ERROR(ParseCert(ca_pem, ca_path).status());
  SHUTTLE_ASSIGN_OR_RETURN(CertAndKey server, LoadCertAndKey(JoinPath(pki_dir, kServerCertFile),
                                                             JoinPath(pki_dir, kServerKeyFile)));
  grpc::SslServerCredentialsOptions options(
      mode == ClientCertMode::kRequire ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                       : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = std::move(ca_pem);
  options.pem_key_cert_pairs.push_back({std::move(server.key_pem), std::move(server.cert_pem)});
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(options);
  if (creds == nullptr) {
    return absl::InternalError(absl::StrCat("gRPC refused the TLS material in ", pki_dir));
  }
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> LoadClientCredentials(
    const std::string& ca_pem_path, const std::string& cert_path, const std::string& key_path) {
  if (cert_path.empty() != key_path.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate and its key go together: give both or neither");
  }
  grpc::SslCredentialsOptions options;
  SHUTTLE_ASSIGN_OR_RETURN(options.pem_root_certs, ReadFile(ca_pem_path));
  SHUTTLE_RETURN_IF_ERROR(ParseCert(options.pem_root_certs, ca_pem_path).status());
  if (!cert_path.empty()) {
    SHUTTLE_ASSIGN_OR_RETURN(CertAndKey client, LoadCertAndKey(cert_path, key_path));
    options.pem_cert_chain = std::move(client.cert_pem);
    options.pem_private_key = std::move(client.key_pem);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(options);
  if (creds == nullptr) {
    return absl::InternalError(absl::StrCat("gRPC refused the TLS material (CA ", ca_pem_path,
                                            ", certificate ", cert_path, ")"));
  }
  return creds;
}

namespace {

// Identities of verified peer certificates, by their exact PEM. Parsing a certificate was most
// of the controller's CPU per Authorize call (bench/fleet_sim.cc), and a fleet has one
// certificate per agent, each presented on every call of its channel. Bounded: cleared whole
// when full, so a flood of distinct certificates costs parsing again, never memory.
class PeerIdentityCache {
 public:
  static constexpr size_t kMaxEntries = 16384;

  std::optional<PeerIdentity> Find(absl::string_view pem) const {
    absl::ReaderMutexLock lock(&mu_);
    auto it = entries_.find(pem);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
  }

  void Insert(absl::string_view pem, const PeerIdentity& id) {
    absl::MutexLock lock(&mu_);
    if (entries_.size() >= kMaxEntries) entries_.clear();
    entries_.emplace(std::string(pem), id);
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, PeerIdentity> entries_ ABSL_GUARDED_BY(mu_);
};

PeerIdentityCache& IdentityCache() {
  static auto* cache = new PeerIdentityCache();  // Never destroyed: handlers may run at exit.
  return *cache;
}

}  // namespace

absl::StatusOr<PeerIdentity> PeerIdentityFromAuthContext(const grpc::AuthContext& auth) {
  const std::vector<grpc::string_ref> certs =
      auth.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (certs.empty() || !auth.IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("peer presented no client certificate");
  }
  const absl::string_view pem(certs.front().data(), certs.front().size());
  // The handshake verified this certificate; its identity depends on its bytes alone.
  if (std::optional<PeerIdentity> known = IdentityCache().Find(pem)) return *std::move(known);
  SHUTTLE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(pem, "peer certificate"));
  SHUTTLE_ASSIGN_OR_RETURN(PeerIdentity id, IdentityFromCert(cert.get(), "peer certificate"));
  IdentityCache().Insert(pem, id);
  return id;
}

}  // namespace shuttle::tls
