#include "agent/deps/user_lookup.h"

#include <grp.h>
#include <pwd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"

namespace shuttle::agent::deps {

absl::StatusOr<ResolvedUser> ResolveUser(const std::string& spec) {
  if (spec.empty()) return absl::InvalidArgumentError("empty user name");
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  uint32_t numeric = 0;
  const bool is_number = absl::SimpleAtoi(spec, &numeric);
  int rc = is_number ? ::getpwuid_r(numeric, &pw, buf.data(), buf.size(), &found)
                     : ::getpwnam_r(spec.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0) return absl::InternalError("user lookup of '" + spec + "': " + std::strerror(rc));
  if (found == nullptr) {
    if (is_number) return ResolvedUser{numeric, numeric, {}};  // No passwd entry.
    return absl::NotFoundError("no such user: " + spec);
  }
  ResolvedUser user{pw.pw_uid, pw.pw_gid, {}};
  int count = 64;
  user.groups.resize(count);
  if (::getgrouplist(pw.pw_name, pw.pw_gid, user.groups.data(), &count) < 0) {
    user.groups.resize(count);
    ::getgrouplist(pw.pw_name, pw.pw_gid, user.groups.data(), &count);
  }
  user.groups.resize(count);
  return user;
}

void RunAs(const ResolvedUser& user, intercept::LaunchSpec& spec) {
  spec.uid = user.uid;
  spec.gid = user.gid;
  spec.groups = user.groups;
}

}  // namespace shuttle::agent::deps
