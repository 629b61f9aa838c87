// Resolving the user a program runs as (`shuttlectl run --user`, a service's `user`) against
// the host's user database. VM roots are overlays of the host root, so they share it unless a
// VM changed its own copy.
#ifndef SHUTTLE_AGENT_DEPS_USER_LOOKUP_H_
#define SHUTTLE_AGENT_DEPS_USER_LOOKUP_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/intercept/launcher.h"

namespace shuttle::agent::deps {

struct ResolvedUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // Supplementary groups (getgrouplist); empty for a bare uid.
};

// `spec` is a user name or a numeric uid. A number without a passwd entry is accepted as itself
// (gid = uid, no groups); a name without one is NOT_FOUND ("no such user: NAME"). Thread-safe.
absl::StatusOr<ResolvedUser> ResolveUser(const std::string& spec);

// Makes `spec` run its program as `user` (uid, gid and supplementary groups).
void RunAs(const ResolvedUser& user, intercept::LaunchSpec& spec);

}  // namespace shuttle::agent::deps

#endif  // SHUTTLE_AGENT_DEPS_USER_LOOKUP_H_
