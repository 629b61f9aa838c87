#include "controller/push/host_bundle.h"

#include <algorithm>
#include <map>
#include <utility>

#include "policy/matcher.h"

namespace shuttle::controller::push {

bool RuleCanApply(std::string_view subject_vm, const std::vector<std::string>& vms) {
  if (subject_vm.empty() || subject_vm == "*" || subject_vm == "host") return true;
  return std::find(vms.begin(), vms.end(), subject_vm) != vms.end();
}

v1::PolicyBundle HostBundle(const v1::PolicyBundle& fleet, std::string_view host_id,
                            const std::vector<std::string>& vms) {
  v1::PolicyBundle out;
  out.set_version(fleet.version());
  for (const v1::Policy& policy : fleet.policies()) {
    if (!policy::PolicyAppliesToHost(policy, host_id)) continue;
    v1::Policy* kept = out.add_policies();
    kept->set_name(policy.name());
    kept->set_mode(policy.mode());
    *kept->mutable_hosts() = policy.hosts();
    kept->set_description(policy.description());
    for (const v1::Rule& rule : policy.rules()) {
      if (RuleCanApply(rule.subject().vm(), vms)) *kept->add_rules() = rule;
    }
  }
  return out;
}

std::string HostBundleKey(const v1::PolicyBundle& fleet, std::string_view host_id,
                          const std::vector<std::string>& vms) {
  std::string key;
  key.reserve(static_cast<size_t>(fleet.policies_size()) + 16 * vms.size() + 1);
  for (const v1::Policy& policy : fleet.policies()) {
    key.push_back(policy::PolicyAppliesToHost(policy, host_id) ? '1' : '0');
  }
  key.push_back('|');
  std::vector<std::string_view> names(vms.begin(), vms.end());
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  for (std::string_view name : names) {
    key.append(std::to_string(name.size())).push_back(':');
    key.append(name);
  }
  return key;
}

namespace {

std::string Serialized(const v1::Policy& policy) {
  std::string out;
  policy.SerializeToString(&out);  // Deterministic enough for equality: same message, same bytes.
  return out;
}

}  // namespace

BundleDelta ComputeDelta(const v1::PolicyBundle& base, const v1::PolicyBundle& target) {
  std::map<std::string_view, const v1::Policy*> old_by_name;
  for (const v1::Policy& p : base.policies()) old_by_name[p.name()] = &p;
  BundleDelta delta;
  for (const v1::Policy& p : target.policies()) {
    auto it = old_by_name.find(p.name());
    if (it == old_by_name.end() || Serialized(*it->second) != Serialized(p)) {
      delta.upserts.push_back(p);
    }
    if (it != old_by_name.end()) old_by_name.erase(it);
  }
  for (const auto& [name, unused] : old_by_name) delta.removals.emplace_back(name);
  return delta;
}

std::optional<BundleDelta> DeltaIfSmall(const v1::PolicyBundle& base,
                                        const v1::PolicyBundle& target, size_t max_changes) {
  BundleDelta delta = ComputeDelta(base, target);
  if (delta.size() == 0) return delta;
  if (delta.size() > max_changes) return std::nullopt;
  if (delta.size() > static_cast<size_t>(target.policies_size())) return std::nullopt;
  return delta;
}

v1::PolicyBundle ApplyDelta(const v1::PolicyBundle& base, uint64_t version,
                            const std::vector<v1::Policy>& upserts,
                            const std::vector<std::string>& removals) {
  std::map<std::string, v1::Policy> by_name;
  for (const v1::Policy& p : base.policies()) by_name[p.name()] = p;
  for (const std::string& name : removals) by_name.erase(name);
  for (const v1::Policy& p : upserts) by_name[p.name()] = p;
  v1::PolicyBundle out;
  out.set_version(version);
  for (auto& [name, p] : by_name) *out.add_policies() = std::move(p);
  return out;
}

}  // namespace shuttle::controller::push
