// Application invocation across VMs (issue 5, DESIGN.md "Broker"), the policy side: which
// programs a compiled policy places in another VM and for which caller VMs (where the agent
// binds the stand-in, agent/invoke/standins.h), what one invocation's decision means (the VM
// and program it runs in), and which environment variables it may take along. Pure functions;
// the server (invoke_server.h) and the stand-in manager use them.
#ifndef SHUTTLE_AGENT_INVOKE_INVOKE_PLAN_H_
#define SHUTTLE_AGENT_INVOKE_INVOKE_PLAN_H_

#include <optional>
#include <string>
#include <vector>

#include "policy/matcher.h"

namespace shuttle::agent::invoke {

// One stand-in the policy wants: running `program` in `caller_vm` runs it in `target_vm`.
struct Placement {
  std::string caller_vm;
  std::string program;  // Absolute path, the same in both VMs' terms as the caller names it.
  std::string target_vm;
  std::string rule;  // "policy/rule" that places it.
  friend bool operator==(const Placement&, const Placement&) = default;
};

// Every placement of `policy`: from each enforced `invoke` rule with action allow or redirect,
// an exact object.program (a prefix names no file to bind over), and a target VM (redirect.vm,
// else object.vm) that is a named VM (not empty, "*" or the host: a program can't be placed on
// the host), for the subject VM the rule names (not the host) or, for an empty or "*" subject,
// every VM in `vms` but the target. The caller VM may be absent from `vms` (it then waits for
// the VM). Sorted by (caller_vm, program); one per pair (the highest-ranked rule's). Pure.
std::vector<Placement> PlanPlacements(const policy::CompiledPolicy& policy,
                                      const std::vector<std::string>& vms);

// The placement of `program` when run in `vm`, if `policy` has one: the agent refuses to start
// a program in a VM that would only hand it on again (no chains, hence no loops such as a
// program placed in B for A and in A for B).
std::optional<Placement> PlacementOf(const policy::CompiledPolicy& policy, const std::string& vm,
                                     const std::string& program);

// What an `invoke` decision for program `program` called from `caller_vm` means.
struct InvokeTarget {
  std::string vm;       // Where the program runs.
  std::string program;  // What runs there: redirect.name, else the program itself.
  std::vector<std::string> env_patterns;  // The rule's `env` list.
};

// The target of `verdict` when it lets the program run in another VM: an enforced allow or
// redirect won by a rule that names a VM other than `caller_vm` and not the host. Otherwise
// nullopt, with `why` set to a one-line reason for the caller ("denied by rule p/r", "no rule
// places /usr/bin/x in another VM", ...).
std::optional<InvokeTarget> TargetOf(const policy::Verdict& verdict, const std::string& caller_vm,
                                     const std::string& program, std::string* why);

// Whether environment variable `name` is passed by `patterns` (exact names, or a prefix ending
// in '*').
bool EnvPassed(const std::string& name, const std::vector<std::string>& patterns);

// The entries of `env` ("NAME=value") that `patterns` pass, in their order; entries without
// '=' are dropped. When PATH is not passed, B's default PATH is added, so that the program
// finds its own helpers.
std::vector<std::string> FilterEnv(const std::vector<std::string>& env,
                                   const std::vector<std::string>& patterns);

// The PATH a program invoked in another VM gets when the caller's is not passed.
inline constexpr char kDefaultPath[] =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

}  // namespace shuttle::agent::invoke

#endif  // SHUTTLE_AGENT_INVOKE_INVOKE_PLAN_H_
