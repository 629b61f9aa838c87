// Per-host policy bundles and the deltas between them: the pure part of the push (no gRPC, no
// locks), so it is unit-tested alone. An agent receives only what can apply to it: the policies
// whose `hosts` selector covers its host id, each with only the rules whose subject VM is any VM,
// the host, or one of the VMs the agent reported.
#ifndef SHUTTLE_CONTROLLER_PUSH_HOST_BUNDLE_H_
#define SHUTTLE_CONTROLLER_PUSH_HOST_BUNDLE_H_

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shuttle/v1/types.pb.h"

namespace shuttle::controller::push {

// True if a rule whose subject VM is `subject_vm` can match a process on a host that runs
// `vms`: "" and "*" (any VM), "host", or exactly one of `vms`.
bool RuleCanApply(std::string_view subject_vm, const std::vector<std::string>& vms);

// The bundle `host_id` receives from `fleet`: version = fleet version; policies that apply to the
// host (policy::PolicyAppliesToHost), in fleet order, with rules filtered by RuleCanApply. A
// policy left without rules is kept (its name and mode still reach the agent, so deltas stay
// simple). Pure; thread-safe.
v1::PolicyBundle HostBundle(const v1::PolicyBundle& fleet, std::string_view host_id,
                            const std::vector<std::string>& vms);

// What HostBundle's result depends on besides `fleet`: which of its policies apply to `host_id`,
// and the set of VM names (order and duplicates ignored). Hosts with equal keys receive equal
// bundles, so the push manager computes one bundle per key and fleet version and shares it,
// instead of one per host. Unambiguous for any VM names (each is length-prefixed). Pure;
// thread-safe.
std::string HostBundleKey(const v1::PolicyBundle& fleet, std::string_view host_id,
                          const std::vector<std::string>& vms);

// The change from one host bundle to another, by policy name.
struct BundleDelta {
  std::vector<v1::Policy> upserts;    // Policies new in `target` or whose content changed.
  std::vector<std::string> removals;  // Policy names in `base` but not in `target`.
  size_t size() const { return upserts.size() + removals.size(); }
};

// The delta that turns `base` into `target` (policy order ignored; a policy is compared by its
// serialized content). Pure; thread-safe.
BundleDelta ComputeDelta(const v1::PolicyBundle& base, const v1::PolicyBundle& target);

// The delta to send, or nullopt when a full snapshot is the better push: the delta changes more
// than `max_changes` policies, or more policies than `target` holds (a full snapshot is then no
// larger). An empty delta (nothing changed for this host, only the version moved) is a delta.
std::optional<BundleDelta> DeltaIfSmall(const v1::PolicyBundle& base,
                                        const v1::PolicyBundle& target, size_t max_changes);

// Applies a delta to `base`, giving the bundle at `version`; what an agent does with a delta
// (policies kept in name order). For tests and for the agent simulator.
v1::PolicyBundle ApplyDelta(const v1::PolicyBundle& base, uint64_t version,
                            const std::vector<v1::Policy>& upserts,
                            const std::vector<std::string>& removals);

}  // namespace shuttle::controller::push

#endif  // SHUTTLE_CONTROLLER_PUSH_HOST_BUNDLE_H_
