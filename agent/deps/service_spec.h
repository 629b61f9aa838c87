// What a registered service is (proto/shuttle/v1/local.proto LocalService) and the rules it must
// follow: names, command, user, environment, readiness address, start timeout. The registry
// (service_registry.h) validates every service it stores with NormalizeService(); the starter
// (service_starter.h) uses ReadyAddress to match a refused connect with the service that would
// serve it, and to probe the service's readiness.
#ifndef SHUTTLE_AGENT_DEPS_SERVICE_SPEC_H_
#define SHUTTLE_AGENT_DEPS_SERVICE_SPEC_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"
#include "shuttle/v1/local.pb.h"

namespace shuttle::agent::deps {

inline constexpr absl::Duration kDefaultStartTimeout = absl::Seconds(10);
inline constexpr absl::Duration kMaxStartTimeout = absl::Minutes(10);
inline constexpr size_t kMaxServiceName = 128;

// Where a service accepts connections once it is ready. Immutable value; thread-compatible.
struct ReadyAddress {
  enum class Kind { kUnixPath, kAbstract, kTcp };
  Kind kind = Kind::kUnixPath;
  std::string path;   // kUnixPath: absolute, normalized, inside the service's VM.
  std::string name;   // kAbstract: the name without its leading NUL.
  std::string ip;     // kTcp: canonical loopback literal ("127.0.0.1", "::1").
  uint16_t port = 0;  // kTcp: 1..65535.

  // "unix:/run/x.sock", "abstract:NAME" or "tcp:127.0.0.1:PORT" / "tcp:[::1]:PORT" (any
  // 127.0.0.0/8 address or ::1). INVALID_ARGUMENT naming what is wrong otherwise.
  static absl::StatusOr<ReadyAddress> Parse(absl::string_view text);
  // The canonical text form, which Parse() accepts.
  std::string ToString() const;
  // A stream connect to this address, for the broker's readiness probe.
  broker::BrokerRequest ToRequest() const;
  // True if `request` (a brokered connect that found nothing listening) aims at this address:
  // the same path, abstract name, or loopback IP and port (0.0.0.0 and :: count as 127.0.0.1
  // and ::1, ::ffff:127.x.y.z as 127.x.y.z, as Linux connects them); stream sockets only.
  bool Serves(const broker::BrokerRequest& request) const;
};

// Checks `service` and fills in its defaults (start_timeout 10s). INVALID_ARGUMENT whose message
// starts with the field: "name: 'a b' may only contain A-Z a-z 0-9 . _ @ -". Pure.
absl::StatusOr<v1::LocalService> NormalizeService(v1::LocalService service);

// "vm/name", how logs and errors name a service.
std::string ServiceLabel(const v1::LocalService& service);

// The service's start timeout (after NormalizeService, always set).
absl::Duration StartTimeoutOf(const v1::LocalService& service);

}  // namespace shuttle::agent::deps

#endif  // SHUTTLE_AGENT_DEPS_SERVICE_SPEC_H_
