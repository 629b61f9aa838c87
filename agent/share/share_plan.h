// Static sharing of FIFOs and POSIX shm files by policy (issue 5, DESIGN.md "Broker"): opening a
// FIFO or shm_open() is not intercepted, so a crossing the policy allows is made by a bind mount
// of the object into the subject VM, at the name the subject uses. This file computes, from a
// compiled policy and the VMs that exist, which binds are wanted; share_manager.h makes them.
#ifndef SHUTTLE_AGENT_SHARE_SHARE_PLAN_H_
#define SHUTTLE_AGENT_SHARE_SHARE_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/vm/vm_mounts.h"
#include "policy/matcher.h"

namespace shuttle::agent::share {

// One bind the policy wants: the object (bind.source_*) made visible in the subject VM
// (bind.target_*) at the name the subject opens.
struct WantedShare {
  BindSpec bind;
  std::string rule;  // "policy/rule" that wants it (the highest-ranked one if several do).
  v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;  // FIFO_OPEN or SHM_OPEN.
  uint64_t rank = 0;
};

// Why a fifo-open/shm-open rule that would open a channel makes no bind (a label value of
// shuttle_agent_share_rules_skipped and the text of a log line).
struct SkippedRule {
  std::string rule;    // "policy/rule".
  std::string reason;  // One of the kSkip* constants.
  std::string detail;  // For the log.
};

inline constexpr char kSkipPrefix[] = "prefix";          // No exact name: can't be bound.
inline constexpr char kSkipSubject[] = "subject";        // Names a program or uid, or the host.
inline constexpr char kSkipObjectVm[] = "object_vm";     // allow without a named object VM.
inline constexpr char kSkipAsk[] = "ask";                // Asked per call: nothing static.
inline constexpr char kSkipMonitor[] = "monitor";        // Not enforced: the kernel isolates.
inline constexpr char kSkipName[] = "name";              // Not a bindable POSIX name/path.
inline constexpr char kSkipOverridden[] = "overridden";  // A higher-ranked rule decides else.

struct SharePlan {
  std::vector<WantedShare> shares;  // At most one per (target_vm, target_path), sorted by it.
  std::vector<SkippedRule> skipped;
};

// Where a POSIX shm object named `name` ("/x") lives in a VM's file system ("/dev/shm/x"), or
// nullopt for a name that is not one (SysV "key:0x..", no leading '/', a second '/', "." or
// "..").
std::optional<std::string> ShmPath(const std::string& name);

// The shares `policy` wants among `vms` (the VMs that exist; a rule's source VM need not be
// among them: its share is then wanted and stays pending until the VM appears):
// - rules of kind fifo-open (object.path) or shm-open (object.name), enforced, action allow or
//   redirect, with an exact name and a subject that is a whole VM (or every VM), never the host;
// - the object lives in object.vm (allow: a VM or "host", named), or in redirect.vm under
//   redirect.name (or the same name);
// - subject.vm named: that VM; empty or "*": every VM in `vms` but the object's;
// - and only where no higher-ranked rule that matches the same subject VM and object (a deny, an
//   ask, a narrower subject, a monitored rule, another target) would decide otherwise: a bind
//   opens the object to every process of the VM, so any doubt means no bind. Deny rules are
//   enforced by the absence of a bind.
// Pure; thread-safe.
SharePlan PlanShares(const policy::CompiledPolicy& policy, const std::vector<std::string>& vms);

}  // namespace shuttle::agent::share

#endif  // SHUTTLE_AGENT_SHARE_SHARE_PLAN_H_
