#include "agent/decide/policy_holder.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/logging.h"
#include "common/status_macros.h"
#include "policy/parser.h"

namespace shuttle::agent {

PolicyHolder::PolicyHolder() {
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> empty =
      policy::CompiledPolicy::Compile(v1::PolicyBundle());
  SHUTTLE_CHECK(empty.ok()) << empty.status();
  current_.store(*std::move(empty));
}

absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> LoadPolicyFile(
    const std::string& path, const std::string& host_id, uint64_t version) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError("policy file " + path + ": " + std::strerror(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  SHUTTLE_ASSIGN_OR_RETURN(v1::Policy parsed, policy::ParsePolicyOrStatus(text.str(), path));
  v1::PolicyBundle bundle;
  bundle.set_version(version);
  *bundle.add_policies() = std::move(parsed);
  return policy::CompiledPolicy::Compile(bundle, host_id);
}

}  // namespace shuttle::agent
