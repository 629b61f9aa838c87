#include "agent/deps/service_spec.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/vm/vm_manager.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::agent::deps {
namespace {

using TimeUtil = google::protobuf::util::TimeUtil;

std::string Str(absl::string_view s) { return std::string(s.data(), s.size()); }

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '@' || c == '-';
}

// Absolute, normalized (no ".", "..", empty components or trailing '/'), no NUL.
absl::Status CheckAbsolutePath(absl::string_view field, absl::string_view path) {
  if (path.empty() || path[0] != '/')
    return Bad(field, absl::StrCat("'", path, "' is not absolute"));
  if (path.find('\0') != absl::string_view::npos) return Bad(field, "contains a NUL character");
  if (path.size() > 1) {
    for (absl::string_view part : absl::StrSplit(path.substr(1), '/')) {
      if (part.empty() || part == "." || part == "..") {
        return Bad(field, absl::StrCat("'", path, "' is not normalized (empty, '.' or '..' part)"));
      }
    }
  }
  return absl::OkStatus();
}

// The loopback IP literal of `text` in canonical form, or an error.
absl::StatusOr<std::string> CanonicalLoopback(absl::string_view text) {
  const std::string ip = Str(text);
  in_addr v4{};
  in6_addr v6{};
  char buf[INET6_ADDRSTRLEN] = {};
  if (::inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    if ((ntohl(v4.s_addr) >> 24) != 127) return Bad("ready", absl::StrCat(ip, " is not loopback"));
    ::inet_ntop(AF_INET, &v4, buf, sizeof(buf));
    return std::string(buf);
  }
  if (::inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&v6)) return Bad("ready", absl::StrCat(ip, " is not loopback"));
    return std::string("::1");
  }
  return Bad("ready", absl::StrCat("'", ip, "' is not an IP address"));
}

// The IP and port a connect to `address` reaches, as Linux routes the special addresses.
std::pair<std::string, uint16_t> Destination(const sockaddr_storage& address) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(address);
    in_addr ip = sin.sin_addr;
    if (ip.s_addr == htonl(INADDR_ANY)) ip.s_addr = htonl(INADDR_LOOPBACK);
    ::inet_ntop(AF_INET, &ip, buf, sizeof(buf));
    return {buf, ntohs(sin.sin_port)};
  }
  if (address.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(address);
    const uint16_t port = ntohs(sin6.sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
      in_addr ip{};
      std::memcpy(&ip, &sin6.sin6_addr.s6_addr[12], sizeof(ip));
      ::inet_ntop(AF_INET, &ip, buf, sizeof(buf));
      return {buf, port};
    }
    if (IN6_IS_ADDR_UNSPECIFIED(&sin6.sin6_addr)) return {"::1", port};
    ::inet_ntop(AF_INET6, &sin6.sin6_addr, buf, sizeof(buf));
    return {buf, port};
  }
  return {"", 0};
}

}  // namespace

absl::StatusOr<ReadyAddress> ReadyAddress::Parse(absl::string_view text) {
  ReadyAddress out;
  if (absl::ConsumePrefix(&text, "unix:")) {
    out.kind = Kind::kUnixPath;
    absl::Status path_ok = CheckAbsolutePath("ready", text);
    if (!path_ok.ok()) return path_ok;
    if (text.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Bad("ready", absl::StrCat("socket path longer than ",
                                       sizeof(sockaddr_un{}.sun_path) - 1, " bytes"));
    }
    out.path = Str(text);
    return out;
  }
  if (absl::ConsumePrefix(&text, "abstract:")) {
    out.kind = Kind::kAbstract;
    if (text.empty()) return Bad("ready", "empty abstract socket name");
    if (text.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Bad("ready", "abstract socket name too long");
    }
    out.name = Str(text);
    return out;
  }
  if (absl::ConsumePrefix(&text, "tcp:")) {
    out.kind = Kind::kTcp;
    absl::string_view host;
    absl::string_view port;
    if (absl::ConsumePrefix(&text, "[")) {
      size_t close = text.find("]:");
      if (close == absl::string_view::npos) return Bad("ready", "expected tcp:[IPv6]:PORT");
      host = text.substr(0, close);
      port = text.substr(close + 2);
    } else {
      size_t colon = text.rfind(':');
      if (colon == absl::string_view::npos) return Bad("ready", "expected tcp:IP:PORT");
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
    }
    uint32_t number = 0;
    if (!absl::SimpleAtoi(port, &number) || number == 0 || number > 65535 ||
        !absl::ascii_isdigit(port.empty() ? 'x' : port[0])) {
      return Bad("ready", absl::StrCat("'", port, "' is not a port (1-65535)"));
    }
    absl::StatusOr<std::string> ip = CanonicalLoopback(host);
    if (!ip.ok()) return ip.status();
    out.ip = *std::move(ip);
    out.port = static_cast<uint16_t>(number);
    return out;
  }
  return Bad("ready",
             absl::StrCat("'", text, "' must start with unix:/PATH, abstract:NAME or tcp:IP:PORT"));
}

std::string ReadyAddress::ToString() const {
  switch (kind) {
    case Kind::kUnixPath:
      return absl::StrCat("unix:", path);
    case Kind::kAbstract:
      return absl::StrCat("abstract:", name);
    case Kind::kTcp:
      return ip.find(':') != std::string::npos ? absl::StrCat("tcp:[", ip, "]:", port)
                                               : absl::StrCat("tcp:", ip, ":", port);
  }
  return "";
}

broker::BrokerRequest ReadyAddress::ToRequest() const {
  switch (kind) {
    case Kind::kUnixPath:
      return broker::UnixPathRequest{path, SOCK_STREAM};
    case Kind::kAbstract:
      return broker::UnixAbstractRequest{name, SOCK_STREAM};
    case Kind::kTcp:
      break;
  }
  // Parse() checked the literal, so Make() cannot fail.
  return *broker::InetRequest::Make(ip, port, SOCK_STREAM);
}

bool ReadyAddress::Serves(const broker::BrokerRequest& request) const {
  if (const auto* unix_path = std::get_if<broker::UnixPathRequest>(&request)) {
    return kind == Kind::kUnixPath && unix_path->type == SOCK_STREAM && unix_path->path == path;
  }
  if (const auto* abstract = std::get_if<broker::UnixAbstractRequest>(&request)) {
    return kind == Kind::kAbstract && abstract->type == SOCK_STREAM && abstract->name == name;
  }
  if (const auto* inet = std::get_if<broker::InetRequest>(&request)) {
    if (kind != Kind::kTcp || inet->type != SOCK_STREAM) return false;
    auto [dest_ip, dest_port] = Destination(inet->address);
    return dest_port == port && dest_ip == ip;
  }
  return false;
}

absl::StatusOr<v1::LocalService> NormalizeService(v1::LocalService service) {
  absl::Status vm_ok = ValidateVmName(service.vm());
  if (!vm_ok.ok()) return Bad("vm", vm_ok.message());
  const std::string& name = service.name();
  if (name.empty()) return Bad("name", "missing");
  if (name.size() > kMaxServiceName) {
    return Bad("name", absl::StrCat("longer than ", kMaxServiceName, " characters"));
  }
  for (char c : name) {
    if (!IsNameChar(c)) {
      return Bad("name", absl::StrCat("'", name, "' may only contain A-Z a-z 0-9 . _ @ -"));
    }
  }
  if (service.argv_size() == 0 || service.argv(0).empty()) {
    return Bad("argv", "no command given");
  }
  for (int i = 0; i < service.argv_size(); ++i) {
    if (service.argv(i).find('\0') != std::string::npos) {
      return Bad("argv", absl::StrCat("argument ", i, " contains a NUL character"));
    }
  }
  for (char c : service.user()) {
    if (!IsNameChar(c) || c == '@') {
      return Bad("user", absl::StrCat("'", service.user(), "' is not a user name or uid"));
    }
  }
  for (const std::string& entry : service.env()) {
    size_t eq = entry.find('=');
    bool ok = eq != std::string::npos && eq > 0 && entry.find('\0') == std::string::npos &&
              !absl::ascii_isdigit(entry[0]);
    for (size_t i = 0; ok && i < eq; ++i) ok = absl::ascii_isalnum(entry[i]) || entry[i] == '_';
    if (!ok) return Bad("env", absl::StrCat("'", entry, "' is not NAME=value"));
  }
  if (!service.cwd().empty()) {
    absl::Status cwd_ok = CheckAbsolutePath("cwd", service.cwd());
    if (!cwd_ok.ok()) return cwd_ok;
  }
  if (service.ready().empty())
    return Bad("ready", "missing (unix:/PATH, abstract:NAME, tcp:IP:PORT)");
  absl::StatusOr<ReadyAddress> ready = ReadyAddress::Parse(service.ready());
  if (!ready.ok()) return ready.status();
  service.set_ready(ready->ToString());
  if (!service.has_start_timeout()) {
    *service.mutable_start_timeout() =
        TimeUtil::MillisecondsToDuration(absl::ToInt64Milliseconds(kDefaultStartTimeout));
  }
  const google::protobuf::Duration& timeout = service.start_timeout();
  if (timeout.seconds() < 0 || timeout.nanos() < 0 || timeout.nanos() >= 1000000000 ||
      (timeout.seconds() == 0 && timeout.nanos() == 0)) {
    return Bad("start_timeout", "must be positive");
  }
  if (StartTimeoutOf(service) > kMaxStartTimeout) {
    return Bad("start_timeout", absl::StrCat("at most ", absl::FormatDuration(kMaxStartTimeout)));
  }
  return service;
}

std::string ServiceLabel(const v1::LocalService& service) {
  return absl::StrCat(service.vm(), "/", service.name());
}

absl::Duration StartTimeoutOf(const v1::LocalService& service) {
  if (!service.has_start_timeout()) return kDefaultStartTimeout;
  return absl::Seconds(service.start_timeout().seconds()) +
         absl::Nanoseconds(service.start_timeout().nanos());
}

}  // namespace shuttle::agent::deps
