#include "agent/invoke/invoke_plan.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shuttle::agent::invoke {
namespace {

constexpr absl::string_view kHost = "host";

bool AnyVm(absl::string_view vm) { return vm.empty() || vm == "*"; }

bool HasKind(const v1::Rule& rule, v1::InteractionKind kind) {
  return std::find(rule.kinds().begin(), rule.kinds().end(), kind) != rule.kinds().end();
}

std::string RuleName(const policy::CompiledRule& rule) {
  return absl::StrCat(rule.policy->name(), "/", rule.rule->name());
}

// The VM an allow/redirect invoke rule runs its program in, or "" when it names none usable.
std::string TargetVmOf(const v1::Rule& rule) {
  const std::string& vm = rule.action() == v1::REDIRECT ? rule.redirect().vm() : rule.object().vm();
  return (AnyVm(vm) || vm == kHost) ? "" : vm;
}

}  // namespace

std::vector<Placement> PlanPlacements(const policy::CompiledPolicy& policy,
                                      const std::vector<std::string>& vms) {
  // (caller VM, program) -> (rank, placement): the highest-ranked rule wins a pair.
  std::map<std::pair<std::string, std::string>, std::pair<uint64_t, Placement>> wanted;
  for (const policy::CompiledRule& compiled : policy.rules()) {
    const v1::Rule& rule = *compiled.rule;
    if (!compiled.enforced || !HasKind(rule, v1::INVOKE)) continue;
    if (rule.action() != v1::ALLOW && rule.action() != v1::REDIRECT) continue;
    const std::string& program = rule.object().program();
    if (program.empty() || program.back() == '*' || program.front() != '/') continue;
    std::string target = TargetVmOf(rule);
    if (target.empty()) continue;
    std::vector<std::string> callers;
    const std::string& subject = rule.subject().vm();
    if (AnyVm(subject)) {
      for (const std::string& vm : vms) {
        if (vm != target) callers.push_back(vm);
      }
    } else if (subject != kHost && subject != target) {
      callers.push_back(subject);
    }
    for (std::string& caller : callers) {
      auto key = std::make_pair(caller, program);
      auto it = wanted.find(key);
      if (it != wanted.end() && it->second.first >= compiled.rank) continue;
      wanted[key] = {compiled.rank,
                     Placement{std::move(caller), program, target, RuleName(compiled)}};
    }
  }
  std::vector<Placement> out;
  out.reserve(wanted.size());
  for (auto& [key, ranked] : wanted) out.push_back(std::move(ranked.second));
  return out;
}

std::optional<Placement> PlacementOf(const policy::CompiledPolicy& policy, const std::string& vm,
                                     const std::string& program) {
  for (Placement& p : PlanPlacements(policy, {vm})) {
    if (p.caller_vm == vm && p.program == program) return std::move(p);
  }
  return std::nullopt;
}

std::optional<InvokeTarget> TargetOf(const policy::Verdict& verdict, const std::string& caller_vm,
                                     const std::string& program, std::string* why) {
  if (verdict.rule == nullptr) {
    *why = absl::StrCat("no rule places ", program, " in another VM for this caller (",
                        absl::string_view(verdict.reason.data(), verdict.reason.size()), ")");
    return std::nullopt;
  }
  const v1::Rule& rule = *verdict.rule->rule;
  const std::string name = RuleName(*verdict.rule);
  if (verdict.verdict == v1::VERDICT_DENY) {
    *why = absl::StrCat("running ", program, " from VM ", caller_vm, " is denied by rule ", name);
    return std::nullopt;
  }
  if (!verdict.enforced) {
    *why = absl::StrCat("rule ", name,
                        " is in monitor mode (audit only): the program is not started in "
                        "another VM");
    return std::nullopt;
  }
  InvokeTarget target;
  target.vm = TargetVmOf(rule);
  if (target.vm.empty() || target.vm == caller_vm) {
    *why = absl::StrCat("rule ", name, " does not place ", program, " in another VM");
    return std::nullopt;
  }
  target.program = program;
  if (rule.action() == v1::REDIRECT && !rule.redirect().name().empty()) {
    target.program = rule.redirect().name();
  }
  target.env_patterns.assign(rule.env().begin(), rule.env().end());
  return target;
}

bool EnvPassed(const std::string& name, const std::vector<std::string>& patterns) {
  for (const std::string& pattern : patterns) {
    if (!pattern.empty() && pattern.back() == '*') {
      if (absl::string_view(name).substr(0, pattern.size() - 1) ==
          absl::string_view(pattern).substr(0, pattern.size() - 1)) {
        return true;
      }
    } else if (name == pattern) {
      return true;
    }
  }
  return false;
}

std::vector<std::string> FilterEnv(const std::vector<std::string>& env,
                                   const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  bool has_path = false;
  for (const std::string& entry : env) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    std::string name = entry.substr(0, eq);
    if (!EnvPassed(name, patterns)) continue;
    has_path = has_path || name == "PATH";
    out.push_back(entry);
  }
  if (!has_path) out.emplace_back(kDefaultPath);
  return out;
}

}  // namespace shuttle::agent::invoke
