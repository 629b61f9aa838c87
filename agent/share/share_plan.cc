// PlanShares: from fifo-open / shm-open rules to the bind mounts they call for (share_plan.h).
#include "agent/share/share_plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"

namespace shuttle::agent::share {
namespace {

constexpr char kShmDir[] = "/dev/shm";

bool AnyVm(const std::string& vm) { return vm.empty() || vm == "*"; }

bool HasKind(const v1::Rule& rule, v1::InteractionKind kind) {
  return std::find(rule.kinds().begin(), rule.kinds().end(), kind) != rule.kinds().end();
}

std::string RuleName(const policy::CompiledRule& rule) {
  return absl::StrCat(rule.policy->name(), "/", rule.rule->name());
}

// The object name field a rule uses for `kind`.
const std::string& NameField(const v1::Rule& rule, v1::InteractionKind kind) {
  return kind == v1::FIFO_OPEN ? rule.object().path() : rule.object().name();
}

// Whether a rule's object name (empty: any; "x*": prefix; else literal) matches `name`.
bool NameMatches(const std::string& pattern, const std::string& name) {
  if (pattern.empty()) return true;
  if (pattern.back() == '*') {
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  }
  return pattern == name;
}

// Where the object lives and under what file path, as `rule` (kind `kind`, exact name `name`)
// would have the call reach it; nullopt when it does not open a channel to a known place.
struct Source {
  std::string vm;
  std::string path;
  friend bool operator==(const Source&, const Source&) = default;
};

std::optional<std::string> FilePath(v1::InteractionKind kind, const std::string& name) {
  if (kind == v1::SHM_OPEN) return ShmPath(name);
  // fifo-open paths are absolute and normalised (the policy validator); the agent keeps its
  // share list one per line, tab-separated, so those two characters are refused.
  if (name.empty() || name[0] != '/' || name.find_first_of("\t\n") != std::string::npos) {
    return std::nullopt;
  }
  return name;
}

std::optional<Source> SourceOf(const policy::CompiledRule& rule, v1::InteractionKind kind,
                               const std::string& name) {
  if (!rule.enforced) return std::nullopt;
  const v1::Rule& proto = *rule.rule;
  Source source;
  std::string source_name = name;
  if (rule.action == v1::REDIRECT) {
    source.vm = proto.redirect().vm();
    if (!proto.redirect().name().empty()) source_name = proto.redirect().name();
  } else if (rule.action == v1::ALLOW) {
    source.vm = proto.object().vm();
  } else {
    return std::nullopt;
  }
  if (AnyVm(source.vm)) return std::nullopt;
  std::optional<std::string> path = FilePath(kind, source_name);
  if (!path.has_value()) return std::nullopt;
  source.path = *std::move(path);
  return source;
}

// A rule ranked above `winner` that matches what a process of `vm` opening `name` (in the
// object VM `object_vm`, "" if the winner leaves it open) would match, and would not make it
// reach `source`; null if none.
const policy::CompiledRule* Overriding(const policy::CompiledPolicy& policy,
                                       const policy::CompiledRule& winner, const std::string& vm,
                                       v1::InteractionKind kind, const std::string& name,
                                       const std::string& object_vm, const Source& source) {
  for (const policy::CompiledRule& other : policy.rules()) {
    if (other.rank <= winner.rank || !HasKind(*other.rule, kind)) continue;
    const v1::Rule& proto = *other.rule;
    if (!AnyVm(proto.subject().vm()) && proto.subject().vm() != vm) continue;
    if (!NameMatches(NameField(proto, kind), name)) continue;
    const std::string& other_object_vm = proto.object().vm();
    if (!AnyVm(other_object_vm) && !object_vm.empty() && other_object_vm != object_vm) continue;
    if (SourceOf(other, kind, name) == source) continue;  // Same outcome.
    return &other;
  }
  return nullptr;
}

}  // namespace

std::optional<std::string> ShmPath(const std::string& name) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos || name == "/." ||
      name == "/.." || name.find_first_of(std::string_view("\t\n\0", 3)) != std::string::npos) {
    return std::nullopt;
  }
  return absl::StrCat(kShmDir, name);
}

SharePlan PlanShares(const policy::CompiledPolicy& policy, const std::vector<std::string>& vms) {
  SharePlan plan;
  std::set<std::pair<std::string, std::string>> skipped_once;  // (rule, reason)
  auto skip = [&](const std::string& rule, const char* reason, std::string detail) {
    if (skipped_once.emplace(rule, reason).second) {
      plan.skipped.push_back({rule, reason, std::move(detail)});
    }
  };
  std::map<std::pair<std::string, std::string>, WantedShare> wanted;  // (vm, path) -> share

  for (const policy::CompiledRule& rule : policy.rules()) {
    const v1::Rule& proto = *rule.rule;
    const bool fifo = HasKind(proto, v1::FIFO_OPEN);
    const bool shm = HasKind(proto, v1::SHM_OPEN);
    if ((!fifo && !shm) || rule.action == v1::DENY) continue;
    const std::string name = RuleName(rule);
    if (rule.action == v1::ASK) {
      skip(name, kSkipAsk, "asked per call; a bind mount cannot ask");
      continue;
    }
    if (!rule.enforced) {
      skip(name, kSkipMonitor, "monitor mode or audit_only: nothing is opened across VMs");
      continue;
    }
    const v1::InteractionKind kind = fifo ? v1::FIFO_OPEN : v1::SHM_OPEN;
    const std::string& object_name = NameField(proto, kind);
    if ((fifo && shm) || object_name.empty() || object_name.back() == '*') {
      skip(name, kSkipPrefix, "no exact object name: only exact names can be bound");
      continue;
    }
    if (!proto.subject().program().empty() || proto.subject().has_uid() ||
        proto.subject().vm() == kHostVm) {
      skip(name, kSkipSubject,
           "names a program or uid, or the host: a bind mount opens the object to a whole VM");
      continue;
    }
    std::optional<Source> source = SourceOf(rule, kind, object_name);
    if (!source.has_value()) {
      if (rule.action == v1::ALLOW && AnyVm(proto.object().vm())) {
        skip(name, kSkipObjectVm, "allow without object.vm: where the object lives is unknown");
      } else {
        skip(name, kSkipName, "not a POSIX shm name (\"/x\") or a bindable path");
      }
      continue;
    }
    const std::optional<std::string> target_path = FilePath(kind, object_name);
    if (!target_path.has_value()) {
      skip(name, kSkipName, "not a POSIX shm name (\"/x\") or a bindable path");
      continue;
    }
    std::vector<std::string> subjects;
    if (AnyVm(proto.subject().vm())) {
      for (const std::string& vm : vms) {
        if (vm != source->vm) subjects.push_back(vm);
      }
    } else if (std::find(vms.begin(), vms.end(), proto.subject().vm()) != vms.end()) {
      subjects.push_back(proto.subject().vm());
    }
    const std::string object_vm = AnyVm(proto.object().vm()) ? "" : proto.object().vm();
    for (const std::string& vm : subjects) {
      if (vm == source->vm && *target_path == source->path) continue;  // Its own object.
      if (const policy::CompiledRule* other =
              Overriding(policy, rule, vm, kind, object_name, object_vm, *source)) {
        skip(name, kSkipOverridden,
             absl::StrCat("in VM ", vm, ", rule ", RuleName(*other), " ranks higher"));
        continue;
      }
      WantedShare share;
      share.bind = {.source_vm = source->vm,
                    .source_path = source->path,
                    .target_vm = vm,
                    .target_path = *target_path,
                    // A FIFO's data flows through a read-only mount too, and its node can't be
                    // changed from the other side; a shm file must be mappable for writing.
                    .read_only = kind == v1::FIFO_OPEN};
      share.rule = name;
      share.kind = kind;
      share.rank = rule.rank;
      auto [it, inserted] = wanted.try_emplace({vm, *target_path}, share);
      if (!inserted && it->second.rank < share.rank) it->second = std::move(share);
    }
  }
  for (auto& [key, share] : wanted) plan.shares.push_back(std::move(share));
  return plan;
}

}  // namespace shuttle::agent::share
