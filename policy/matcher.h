// The compiled policy: an immutable matcher built from the policies that apply to one host,
// answering "what is decided for this interaction, and by which rule" in well under a
// microsecond, independent of the number of rules for other kinds and VMs.
//
// Semantics (DESIGN.md section 1; docs/policy-reference.md is the operator's version):
// - Scope: subject VM == object VM -> intra-vm; subject VM "host" -> host-vm; object VM "host"
//   -> vm-host; otherwise cross-vm. An empty object VM (the interception does not know where
//   the object lives) matches rules for any object VM; the winner's object VM is the target.
// - Defaults when no rule matches: intra-vm -> allow; cross-vm, vm-host, host-vm -> deny
//   (least penetration). Empty object VM and no rule -> intra-vm allow (the call reaches the
//   caller's own VM's object; isolation is the kernel's).
// - Precedence among matching rules, highest first:
//   1. subject specificity: program named (4) + VM named (2) + uid named (1), higher wins;
//   2. object name: the longer literal part wins, and an exact name beats a prefix ("/a*")
//      of the same literal length; then a rule naming the object VM beats one that does not;
//   3. action: deny > ask > redirect > allow (deny wins a tie);
//   4. still tied: policy name, then rule order in the file (deterministic).
// - Monitor: a winner from a `mode: monitor` policy or an `audit_only` rule has
//   enforced=false; the agent then lets the call continue (the kernel's isolation still holds).
//
// Details the points above leave open (docs/policy-reference.md says the same):
// - A subject or object VM selector that is empty or "*" matches any VM and the host.
// - With a winning rule, the scope is computed against where the call goes: the redirect
//   target's VM for a redirect; else the interaction's object VM; else the rule's object VM;
//   else the subject's own VM (intra-vm).
// - An `ask` winner: `verdict` is what its fail mode decides (deny unless `fail: open`), so a
//   caller that does not ask fails safe; Verdict::NeedsAsk() tells the agent to ask.
// - Object names as the agent reports them in Interaction.object_name: unix-connect path
//   sockets by path, abstract sockets as "@" + name (as ss(8) shows them); tcp-connect and
//   udp-send as "127.0.0.1:5432" or "[::1]:5432"; the others as their name or path.
#ifndef SHUTTLE_POLICY_MATCHER_H_
#define SHUTTLE_POLICY_MATCHER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "shuttle/v1/policy.pb.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::policy {

// One rule as compiled: owned by its CompiledPolicy, valid as long as the CompiledPolicy is.
struct CompiledRule {
  const v1::Policy* policy = nullptr;  // Points into the CompiledPolicy's bundle copy.
  const v1::Rule* rule = nullptr;
  bool enforced = true;  // False for monitor-mode policies and audit_only rules.
  int subject_specificity = 0;
  int literal_length = 0;
  bool exact = false;
  uint32_t order = 0;  // Global tie-break order.

  // Precomputed for the hot path. `rank` orders by the precedence above (higher wins; unique).
  uint64_t rank = 0;
  v1::Action action = v1::ACTION_UNSPECIFIED;  // rule->action()
  v1::Verdict verdict = v1::VERDICT_DENY;      // What it decides; for ask, its fail mode's.
  std::string_view program;  // Literal part of subject.program; empty: any program.
  bool program_prefix = false;
  bool has_uid = false;
  uint32_t uid = 0;
  std::string_view object_vm;  // Empty: any object VM.
};

// A cheap, non-owning view of an interaction for the hot path (no allocation to build one).
struct InteractionView {
  std::string_view subject_vm;  // "host" for host processes.
  std::string_view program;
  uint32_t uid = 0;
  v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
  std::string_view object_vm;  // May be empty: unknown.
  std::string_view object_name;

  static InteractionView FromProto(const v1::Interaction& interaction);
};

// The verdict for one interaction. `rule` is null when the default decided.
struct Verdict {
  v1::Verdict verdict = v1::VERDICT_DENY;
  v1::Scope scope = v1::SCOPE_UNSPECIFIED;
  const CompiledRule* rule = nullptr;
  bool enforced = true;
  std::string_view reason;  // Static text for defaults; "rule" otherwise.

  // True if the winner is an `ask` rule: the agent asks the controller, and `verdict` (the
  // rule's fail mode) applies only if no answer comes in time.
  bool NeedsAsk() const { return rule != nullptr && rule->action == v1::ASK; }
};

// Full explanation: the winner and every matching rule that lost, with why.
struct Explanation {
  Verdict verdict;
  struct Loser {
    const CompiledRule* rule;
    std::string why;
  };
  std::vector<Loser> losers;
};

class CompiledPolicy {
 public:
  // Compiles every policy of `bundle` whose `hosts` selector matches `host_id` (empty host_id:
  // every policy). Validates each policy first (ValidatePolicy), except that a policy without
  // rules is accepted (a host's bundle carries one when all its rules are for other VMs); on any
  // error returns INVALID_ARGUMENT naming policy and rule, and nothing is half-applied.
  static absl::StatusOr<std::shared_ptr<const CompiledPolicy>> Compile(
      const v1::PolicyBundle& bundle, std::string_view host_id = "");

  // Thread-safe (the object is immutable). Does not allocate.
  Verdict Decide(const InteractionView& interaction) const;

  // Slower; for PolicyService.Explain and `shuttlectl explain`.
  Explanation Explain(const InteractionView& interaction) const;

  // Fills a v1::Decision from a Verdict of this policy.
  v1::Decision ToProto(const Verdict& verdict) const;

  uint64_t version() const;
  size_t rule_count() const;
  // Every compiled rule (in no particular order), e.g. for the agent's ask cache, which drops
  // the answers of rules that changed or vanished. Valid as long as this CompiledPolicy.
  const std::vector<CompiledRule>& rules() const;

  // True if some rule names a program (subject.program). When false, Decide()
  // never looks at InteractionView::program, so a caller may skip finding it out (the agent's
  // readlink of /proc/PID/exe on every intercepted call).
  bool uses_programs() const;
  // True if some rule names a uid (subject.uid); when false, InteractionView::uid is ignored.
  bool uses_uids() const;
  // True if some rule lists `kind`. When false, every interaction of that kind gets the default
  // for its scope, whoever the subject is (the agent then skips finding out the subject's VM).
  bool has_rules_for(v1::InteractionKind kind) const;

  ~CompiledPolicy();

 private:
  struct Index;
  CompiledPolicy();
  std::unique_ptr<Index> index_;
};

// True if a policy's `hosts` selector (empty, "*", exact ids, or "prefix*" globs) covers host_id.
bool PolicyAppliesToHost(const v1::Policy& policy, std::string_view host_id);

}  // namespace shuttle::policy

#endif  // SHUTTLE_POLICY_MATCHER_H_
