#include "agent/client/policy_snapshot.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/vm/vm_state.h"
#include "common/status_macros.h"

namespace shuttle::agent {
std::string LastGoodPolicyPath(const std::string& data_dir) {
  return data_dir + "/policy/last-good.pb";
}

absl::StatusOr<v1::PolicyBundle> BundleFromPush(const v1::PolicyBundle& current,
                                                const v1::StreamResponse::Push& push) {
  if (!push.is_delta()) {
    v1::PolicyBundle bundle = push.snapshot();
    bundle.set_version(push.version());
    return bundle;
  }
  if (push.base_version() != current.version()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "delta to version ", push.version(), " is based on version ", push.base_version(),
        " but this agent enforces version ", current.version(), "; a full snapshot is needed"));
  }
  std::map<std::string, v1::Policy> by_name;
  for (const v1::Policy& p : current.policies()) by_name[p.name()] = p;
  for (const std::string& name : push.removals()) by_name.erase(name);
  std::map<std::string, int> seen;
  for (const v1::Policy& p : push.upserts()) {
    if (++seen[p.name()] > 1) {
      return absl::InvalidArgumentError(absl::StrCat("delta to version ", push.version(),
                                                     " upserts policy '", p.name(), "' twice"));
    }
    by_name[p.name()] = p;
  }
  v1::PolicyBundle bundle;
  bundle.set_version(push.version());
  for (auto& [name, p] : by_name) *bundle.add_policies() = std::move(p);
  return bundle;
}

absl::Status SavePolicySnapshot(const std::string& path, const v1::PolicyBundle& bundle) {
  std::string bytes;
  if (!bundle.SerializeToString(&bytes)) {
    return absl::InternalError(absl::StrCat("cannot serialize policy version ", bundle.version()));
  }
  return WriteFileAtomically(path, bytes);
}

absl::StatusOr<v1::PolicyBundle> LoadPolicySnapshot(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat("policy snapshot ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::UnavailableError(msg);
  }
  std::string bytes;
  char buf[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return absl::UnavailableError(
          absl::StrCat("policy snapshot ", path, ": read: ", std::strerror(err)));
    }
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
    if (bytes.size() > kMaxPolicyBundleBytes) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat("policy snapshot ", path, ": larger than ",
                                              kMaxPolicyBundleBytes, " bytes"));
    }
  }
  ::close(fd);
  v1::PolicyBundle bundle;
  if (!bundle.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("policy snapshot ", path, ": does not parse"));
  }
  return bundle;
}

absl::StatusOr<LoadedPolicy> LoadAndCompileSnapshot(const std::string& path,
                                                    const std::string& host_id) {
  LoadedPolicy out;
  SHUTTLE_ASSIGN_OR_RETURN(out.bundle, LoadPolicySnapshot(path));
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> compiled =
      policy::CompiledPolicy::Compile(out.bundle, host_id);
  if (!compiled.ok()) {
    return absl::Status(compiled.status().code(),
                        absl::StrCat("policy snapshot ", path, " (version ", out.bundle.version(),
                                     "): ", compiled.status().message()));
  }
  out.compiled = *std::move(compiled);
  return out;
}

}  // namespace shuttle::agent
