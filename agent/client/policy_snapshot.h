// The agent's side of policy versions: turning a controller push (full snapshot or delta) into
// the bundle it describes, and the last good bundle persisted in the data directory, which the
// agent enforces at start before any controller answers (DESIGN.md section 2, "agent").
#ifndef SHUTTLE_AGENT_CLIENT_POLICY_SNAPSHOT_H_
#define SHUTTLE_AGENT_CLIENT_POLICY_SNAPSHOT_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "policy/matcher.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent {

// The largest bundle the agent takes, from the controller (a push; gRPC's default of 4 MiB is
// far less than a whole fleet's policies for one host may need) or from disk.
inline constexpr size_t kMaxPolicyBundleBytes = size_t{256} << 20;

// DATA_DIR/policy/last-good.pb: a serialized v1::PolicyBundle, written atomically.
std::string LastGoodPolicyPath(const std::string& data_dir);

// The bundle `push` describes, given the bundle enforced now (`current`; version 0 = none).
// - Full snapshot (is_delta false): `push.snapshot`, whose version becomes `push.version`
//   (the push's version is authoritative).
// - Delta: FAILED_PRECONDITION unless `push.base_version == current.version()` (the agent then
//   NACKs and asks for a full snapshot, see PolicyClient). Otherwise `current` with every
//   policy named in `removals` dropped (absent names are ignored), then every policy in
//   `upserts` replacing the one of the same name or added; INVALID_ARGUMENT if a name appears
//   twice in `upserts`. Policies are kept sorted by name, so equal inputs give equal bundles.
// Only assembles; CompiledPolicy::Compile validates. Pure and thread-safe.
absl::StatusOr<v1::PolicyBundle> BundleFromPush(const v1::PolicyBundle& current,
                                                const v1::StreamResponse::Push& push);

// Writes `bundle` to `path` atomically (temporary file, fsync, rename, fsync directory), mode
// 0600. The directory must exist.
absl::Status SavePolicySnapshot(const std::string& path, const v1::PolicyBundle& bundle);

// Reads a bundle written by SavePolicySnapshot. NOT_FOUND if the file is absent;
// DATA_LOSS naming the file if it does not parse.
absl::StatusOr<v1::PolicyBundle> LoadPolicySnapshot(const std::string& path);

// A bundle and its compiled form for one host.
struct LoadedPolicy {
  v1::PolicyBundle bundle;
  std::shared_ptr<const policy::CompiledPolicy> compiled;
};

// LoadPolicySnapshot, then CompiledPolicy::Compile(bundle, host_id). Errors name the file.
absl::StatusOr<LoadedPolicy> LoadAndCompileSnapshot(const std::string& path,
                                                    const std::string& host_id);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_CLIENT_POLICY_SNAPSHOT_H_
