#include "controller/store/store_testing.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::controller::testing {

PolicyWrite MakeWrite(const std::string& name, const std::string& source,
                      std::optional<uint64_t> expected_revision, const std::string& author) {
  PolicyWrite write;
  write.name = name;
  write.source = source;
  write.policy.set_name(name);
  write.policy.set_mode(v1::ENFORCE);
  write.policy.set_description(source);
  write.policy.add_hosts("*");
  v1::Rule* rule = write.policy.add_rules();
  rule->set_name("allow-db");
  rule->mutable_subject()->set_vm("web");
  rule->add_kinds(v1::UNIX_CONNECT);
  rule->mutable_object()->set_vm("db");
  rule->mutable_object()->set_path("/run/postgresql/.s.PGSQL.5432");
  rule->set_action(v1::ALLOW);
  write.author = author;
  write.change = "apply";
  write.expected_revision = expected_revision;
  return write;
}

absl::Status CheckConsistent(Store& store, const std::vector<std::string>& names) {
  SHUTTLE_ASSIGN_OR_RETURN(uint64_t fleet_version, store.FleetVersion());
  std::set<uint64_t> versions;
  std::map<std::string, v1::PolicyRevision> live;
  for (const std::string& name : names) {
    auto history = store.PolicyHistory(name);
    if (absl::IsNotFound(history.status())) continue;
    SHUTTLE_RETURN_IF_ERROR(history.status());
    uint64_t last_version = 0;
    for (size_t i = 0; i < history->size(); ++i) {
      const v1::PolicyRevision& r = (*history)[i];
      std::string where = absl::StrCat("policy \"", name, "\" history[", i, "]");
      if (r.name() != name) return absl::InternalError(absl::StrCat(where, ": name ", r.name()));
      if (r.revision() != i + 1) {
        return absl::InternalError(absl::StrCat(where, ": revision ", r.revision()));
      }
      if (r.fleet_version() <= last_version) {
        return absl::InternalError(
            absl::StrCat(where, ": fleet_version ", r.fleet_version(), " after ", last_version));
      }
      last_version = r.fleet_version();
      if (!versions.insert(r.fleet_version()).second) {
        return absl::InternalError(
            absl::StrCat(where, ": fleet_version ", r.fleet_version(), " used twice"));
      }
      if (r.deleted() && !r.source().empty()) {
        return absl::InternalError(absl::StrCat(where, ": tombstone with a source"));
      }
    }
    const v1::PolicyRevision& latest = history->back();
    auto current = store.GetPolicy(name, 0);
    if (latest.deleted()) {
      if (!absl::IsNotFound(current.status())) {
        return absl::InternalError(absl::StrCat("policy \"", name,
                                                "\" is deleted but GetPolicy(0) gives ",
                                                current.status().ToString()));
      }
    } else {
      SHUTTLE_RETURN_IF_ERROR(current.status());
      if (current->revision() != latest.revision()) {
        return absl::InternalError(absl::StrCat("policy \"", name, "\": GetPolicy(0) revision ",
                                                current->revision(), " but history ends at ",
                                                latest.revision()));
      }
      live[name] = latest;
    }
  }
  if (versions.size() != fleet_version ||
      (!versions.empty() && (*versions.begin() != 1 || *versions.rbegin() != fleet_version))) {
    return absl::InternalError(
        absl::StrCat("fleet version is ", fleet_version, " but revisions use ", versions.size(),
                     " versions in [", versions.empty() ? 0 : *versions.begin(), ", ",
                     versions.empty() ? 0 : *versions.rbegin(), "]"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<v1::PolicyRevision> listed, store.ListPolicies());
  if (listed.size() != live.size()) {
    return absl::InternalError(
        absl::StrCat("ListPolicies gives ", listed.size(), " policies, expected ", live.size()));
  }
  auto it = live.begin();
  for (const v1::PolicyRevision& r : listed) {
    if (r.name() != it->first || r.revision() != it->second.revision()) {
      return absl::InternalError(absl::StrCat("ListPolicies gives ", r.name(), "@", r.revision(),
                                              ", expected ", it->first, "@",
                                              it->second.revision()));
    }
    ++it;
  }
  return absl::OkStatus();
}

TempDir::TempDir() {
  const char* base = getenv("TEST_TMPDIR");
  if (base == nullptr || *base == '\0') base = getenv("TMPDIR");
  if (base == nullptr || *base == '\0') base = "/tmp";
  std::string templ = absl::StrCat(base, "/shuttle-store-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    SHUTTLE_LOG(FATAL) << "mkdtemp " << templ << ": " << strerror(errno);
  }
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) {
    SHUTTLE_LOG(WARNING) << "removing " << path_ << ": " << ec.message();
  }
}

}  // namespace shuttle::controller::testing
