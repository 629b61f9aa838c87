// The compiled matcher. Layout: per interaction kind, a hash map from subject VM ("*" for rules
// that name none) to a bucket; a bucket indexes its rules by object name: exact names in a hash
// map, "*:PORT" addresses by port, prefixes in a radix trie, and rules naming no object in a
// list. Every list is sorted by precedence, so a lookup takes the first rule of each list that
// passes the remaining filters (program, uid, object VM), and stops early in a list once nothing
// in it can beat the best so far. A lookup visits two buckets (the subject VM's, found by one
// hash probe, and the any-VM one, cached per kind) and costs in each one exact probe, one trie
// walk (linear in the name's length) and a few list heads, whatever the number of rules.
#include "policy/matcher.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "policy/parser.h"
#include "policy/prefix_trie.h"
#include "policy/validate_internal.h"

namespace shuttle::policy {
namespace {

constexpr int kKindCount = v1::DEPEND + 1;
constexpr std::string_view kAnyVm = "*";

// Bits of CompiledRule::rank, most significant first: the precedence of matcher.h.
constexpr int kOrderBits = 32;
constexpr int kActionShift = kOrderBits;               // 2 bits
constexpr int kObjectVmShift = kActionShift + 2;       // 1 bit
constexpr int kExactShift = kObjectVmShift + 1;        // 1 bit
constexpr int kLiteralShift = kExactShift + 1;         // 13 bits
constexpr int kSpecificityShift = kLiteralShift + 13;  // 3 bits
constexpr int kMaxLiteralRank = (1 << 13) - 1;

int ActionRank(v1::Action action) {
  switch (action) {
    case v1::DENY:
      return 3;
    case v1::ASK:
      return 2;
    case v1::REDIRECT:
      return 1;
    default:
      return 0;
  }
}

uint64_t RankOf(const CompiledRule& r) {
  return (uint64_t{static_cast<uint32_t>(r.subject_specificity)} << kSpecificityShift) |
         (uint64_t{static_cast<uint32_t>(std::min(r.literal_length, kMaxLiteralRank))}
          << kLiteralShift) |
         (uint64_t{r.exact} << kExactShift) | (uint64_t{!r.object_vm.empty()} << kObjectVmShift) |
         (uint64_t{static_cast<uint32_t>(ActionRank(r.action))} << kActionShift) |
         uint64_t{UINT32_MAX - r.order};
}

// What a rule decides; for ask, what its fail mode decides (closed unless `fail: open`).
v1::Verdict VerdictOf(const v1::Rule& rule) {
  switch (rule.action()) {
    case v1::ALLOW:
      return v1::VERDICT_ALLOW;
    case v1::REDIRECT:
      return v1::VERDICT_REDIRECT;
    case v1::ASK:
      return rule.ask().fail_mode() == v1::FAIL_OPEN ? v1::VERDICT_ALLOW : v1::VERDICT_DENY;
    default:
      return v1::VERDICT_DENY;
  }
}

bool IsAnyVm(std::string_view vm) { return vm.empty() || vm == kAnyVm; }

v1::Scope ScopeOf(std::string_view subject_vm, std::string_view object_vm) {
  if (subject_vm == object_vm) return v1::INTRA_VM;
  if (subject_vm == "host") return v1::HOST_VM;
  if (object_vm == "host") return v1::VM_HOST;
  return v1::CROSS_VM;
}

}  // namespace

namespace internal {

// A run of entries in Bucket::entries.
struct Span {
  uint32_t begin = 0;
  uint32_t len = 0;
};

// Rules of one (kind, subject VM), indexed by object name.
struct Bucket {
  StringMap<Span> exact;
  absl::flat_hash_map<uint32_t, Span> any_ip_port;  // "*:PORT" addresses.
  PrefixTrie prefixes;                              // Value: index into prefix_spans.
  std::vector<Span> prefix_spans;
  Span any_name;
  std::vector<const CompiledRule*> entries;
};

struct MatcherIndex {
  uint64_t version = 0;
  v1::PolicyBundle bundle;  // The applicable policies, by name; CompiledRule points into it.
  std::vector<CompiledRule> rules;
  bool uses_programs = false;  // Some rule's CompiledRule::program is non-empty.
  bool uses_uids = false;      // Some rule's CompiledRule::has_uid is set.
  // Per kind: subject VM ("*" for rules that name none) -> bucket.
  std::array<StringMap<Bucket>, kKindCount> buckets;
  // Per kind: the "*" bucket of `buckets`, or null; saves a probe per lookup.
  std::array<const Bucket*, kKindCount> any_vm_bucket{};
};

}  // namespace internal

struct CompiledPolicy::Index : internal::MatcherIndex {};

namespace {

using internal::Append;
using internal::Bucket;
using internal::Cat;
using internal::Join;
using internal::Span;

// Where a rule goes within its buckets.
struct ObjectKey {
  enum class Type { kExact, kPrefix, kAnyIpPort, kAnyName } type = Type::kAnyName;
  std::string key;  // Exact name or literal prefix.
  uint32_t port = 0;
};

ObjectKey ObjectKeyOf(const v1::ObjectSelector& object, int* literal_length, bool* exact) {
  internal::ObjectName name = internal::ObjectNameOf(object);
  ObjectKey out;
  *literal_length = 0;
  *exact = false;
  if (name.field == internal::ObjectField::kNone) return out;
  internal::NamePattern pattern = internal::SplitPattern(name.value);
  *literal_length = static_cast<int>(pattern.literal.size());
  *exact = !pattern.prefix;
  if (name.field == internal::ObjectField::kAddress) {
    std::string error;
    std::optional<internal::AddressPattern> address =
        internal::ParseAddressPattern(name.value, &error);
    if (address && address->any_ip) {
      out.type = ObjectKey::Type::kAnyIpPort;
      out.port = address->port;
      *literal_length = static_cast<int>(name.value.size()) - 1;  // ":PORT"
      *exact = true;
      return out;
    }
  }
  std::string_view sigil = name.field == internal::ObjectField::kAbstract ? "@" : "";
  out.type = pattern.prefix ? ObjectKey::Type::kPrefix : ObjectKey::Type::kExact;
  out.key = Cat(sigil, pattern.literal);
  return out;
}

int SpecificityOf(const v1::SubjectSelector& subject) {
  return (subject.program().empty() ? 0 : 4) + (IsAnyVm(subject.vm()) ? 0 : 2) +
         (subject.has_uid() ? 1 : 0);
}

// Collects a bucket's rules before they are sorted into spans.
struct BucketBuilder {
  internal::StringMap<std::vector<const CompiledRule*>> exact;
  internal::StringMap<std::vector<const CompiledRule*>> prefix;
  absl::flat_hash_map<uint32_t, std::vector<const CompiledRule*>> any_ip_port;
  std::vector<const CompiledRule*> any_name;
};

Span AppendSorted(std::vector<const CompiledRule*>& list, Bucket& bucket) {
  std::sort(list.begin(), list.end(),
            [](const CompiledRule* a, const CompiledRule* b) { return a->rank > b->rank; });
  Span span{static_cast<uint32_t>(bucket.entries.size()), static_cast<uint32_t>(list.size())};
  bucket.entries.insert(bucket.entries.end(), list.begin(), list.end());
  return span;
}

void Finish(BucketBuilder& builder, Bucket& bucket) {
  size_t total = builder.any_name.size();
  for (const auto& [key, list] : builder.exact) total += list.size();
  for (const auto& [key, list] : builder.prefix) total += list.size();
  for (const auto& [key, list] : builder.any_ip_port) total += list.size();
  bucket.entries.reserve(total);

  bucket.exact.reserve(builder.exact.size());
  for (auto& [key, list] : builder.exact) bucket.exact.emplace(key, AppendSorted(list, bucket));
  for (auto& [port, list] : builder.any_ip_port) {
    bucket.any_ip_port.emplace(port, AppendSorted(list, bucket));
  }
  std::vector<std::pair<std::string, uint32_t>> prefixes;
  prefixes.reserve(builder.prefix.size());
  for (auto& [key, list] : builder.prefix) {
    prefixes.emplace_back(key, static_cast<uint32_t>(bucket.prefix_spans.size()));
    bucket.prefix_spans.push_back(AppendSorted(list, bucket));
  }
  bucket.prefixes.Build(std::move(prefixes));
  bucket.any_name = AppendSorted(builder.any_name, bucket);
}

// The filters a rule adds to its bucket's (kind, subject VM, object name).
inline bool Passes(const CompiledRule& r, const InteractionView& in) {
  if (r.has_uid && r.uid != in.uid) return false;
  if (!r.program.empty()) {
    if (r.program_prefix ? !in.program.starts_with(r.program) : r.program != in.program) {
      return false;
    }
  }
  if (!r.object_vm.empty() && !in.object_vm.empty() && r.object_vm != in.object_vm) return false;
  return true;
}

// Calls visit(bucket, span) for every list of candidates for `in`: for the subject's VM bucket
// and the any-VM bucket, the exact name, the "*:PORT" port, every stored prefix of the name and
// the rules that name no object.
template <typename Visit>
void ForEachCandidateList(const internal::MatcherIndex& index, const InteractionView& in,
                          Visit&& visit) {
  const int kind = static_cast<int>(in.kind);
  if (kind <= 0 || kind >= kKindCount) return;
  const auto& by_vm = index.buckets[static_cast<size_t>(kind)];
  if (by_vm.empty()) return;
  const bool by_address = in.kind == v1::TCP_CONNECT || in.kind == v1::UDP_SEND;
  const size_t name_hash = internal::StringHash()(in.object_name);  // Once for both buckets.
  auto visit_bucket = [&](const Bucket& bucket) {
    if (!in.object_name.empty()) {
      if (!bucket.exact.empty()) {
        auto it = bucket.exact.find(in.object_name, name_hash);
        if (it != bucket.exact.end()) visit(bucket, it->second);
      }
      if (by_address && !bucket.any_ip_port.empty()) {
        auto it = bucket.any_ip_port.find(internal::PortOfAddress(in.object_name));
        if (it != bucket.any_ip_port.end()) visit(bucket, it->second);
      }
      bucket.prefixes.ForEachPrefix(in.object_name, [&](size_t /*length*/, uint32_t value) {
        visit(bucket, bucket.prefix_spans[value]);
      });
    }
    if (bucket.any_name.len > 0) visit(bucket, bucket.any_name);
  };
  if (!IsAnyVm(in.subject_vm)) {
    auto it = by_vm.find(in.subject_vm);
    if (it != by_vm.end()) visit_bucket(it->second);
  }
  if (const Bucket* any = index.any_vm_bucket[static_cast<size_t>(kind)]) visit_bucket(*any);
}

constexpr std::string_view kReasonRule = "rule";
constexpr std::string_view kReasonIntraVm = "default: intra-vm allowed";
constexpr std::string_view kReasonCrossVm = "default: cross-vm denied";
constexpr std::string_view kReasonVmHost = "default: vm-host denied";
constexpr std::string_view kReasonHostVm = "default: host-vm denied";

Verdict MakeVerdict(const InteractionView& in, const CompiledRule* winner) {
  Verdict out;
  if (winner == nullptr) {
    out.scope = ScopeOf(in.subject_vm, in.object_vm.empty() ? in.subject_vm : in.object_vm);
    out.verdict = out.scope == v1::INTRA_VM ? v1::VERDICT_ALLOW : v1::VERDICT_DENY;
    out.enforced = true;
    switch (out.scope) {
      case v1::INTRA_VM:
        out.reason = kReasonIntraVm;
        break;
      case v1::HOST_VM:
        out.reason = kReasonHostVm;
        break;
      case v1::VM_HOST:
        out.reason = kReasonVmHost;
        break;
      default:
        out.reason = kReasonCrossVm;
        break;
    }
    return out;
  }
  std::string_view target = in.subject_vm;
  if (winner->action == v1::REDIRECT) {
    target = winner->rule->redirect().vm();
  } else if (!in.object_vm.empty()) {
    target = in.object_vm;
  } else if (!winner->object_vm.empty()) {
    target = winner->object_vm;
  }
  out.scope = ScopeOf(in.subject_vm, target);
  out.verdict = winner->verdict;
  out.rule = winner;
  out.enforced = winner->enforced;
  out.reason = kReasonRule;
  return out;
}

// "program and VM", "VM only", "nothing (a global rule)".
std::string DescribeSubject(int specificity) {
  std::vector<std::string_view> parts;
  if (specificity & 4) parts.push_back("program");
  if (specificity & 2) parts.push_back("VM");
  if (specificity & 1) parts.push_back("uid");
  switch (parts.size()) {
    case 0:
      return "nothing (a global rule)";
    case 1:
      return Cat(parts[0], " only");
    case 2:
      return Cat(parts[0], " and ", parts[1]);
    default:
      return Cat(parts[0], ", ", parts[1], " and ", parts[2]);
  }
}

std::string ObjectText(const CompiledRule& r) {
  return std::string(internal::ObjectNameOf(r.rule->object()).value);
}

// Why `loser` ranks below `winner`: the first precedence step that tells them apart.
std::string WhyLost(const CompiledRule& loser, const CompiledRule& winner) {
  if (loser.subject_specificity != winner.subject_specificity) {
    return Cat("less specific subject: names ", DescribeSubject(loser.subject_specificity),
               "; winner names ", DescribeSubject(winner.subject_specificity));
  }
  if (loser.literal_length != winner.literal_length) {
    if (loser.literal_length == 0) {
      return Cat("names no object; winner names '", ObjectText(winner), "'");
    }
    return Cat("shorter object ", loser.exact ? "name" : "prefix", " (", loser.literal_length,
               " < ", winner.literal_length, "): '", ObjectText(loser), "' vs '",
               ObjectText(winner), "'");
  }
  if (loser.exact != winner.exact) {
    return Cat("object prefix '", ObjectText(loser), "' of the same length as winner's exact '",
               ObjectText(winner), "'; an exact name wins");
  }
  if (loser.object_vm.empty() != winner.object_vm.empty()) {
    return Cat("names no object VM; winner names VM '", winner.object_vm, "'");
  }
  const v1::Action la = loser.rule->action();
  const v1::Action wa = winner.rule->action();
  if (la != wa) {
    if (wa == v1::DENY) return "deny wins a tie";
    return Cat(ActionName(wa), " beats ", ActionName(la),
               " in a tie (deny > ask > redirect > allow)");
  }
  if (loser.policy != winner.policy) {
    return Cat("later in order: policy '", winner.policy->name(), "' sorts before '",
               loser.policy->name(), "'");
  }
  return Cat("later in order: rule '", winner.rule->name(), "' comes first in policy '",
             winner.policy->name(), "'");
}

// "policy 'webapp', rule 'web-db': webapp.yaml:12:5: rules[2].object.path: ..."
std::string CompileError(const v1::Policy& policy, const v1::ValidationError& error) {
  std::string rule_part;
  std::string_view field = error.field();
  if (field.starts_with("rules[")) {
    size_t close = field.find(']');
    int index = -1;
    if (close != std::string_view::npos &&
        absl::SimpleAtoi(absl::string_view(field.data() + 6, close - 6), &index) && index >= 0 &&
        index < policy.rules_size() && !policy.rules(index).name().empty()) {
      rule_part = Cat(", rule '", policy.rules(index).name(), "'");
    }
  }
  return Cat("policy '", policy.name(), "'", rule_part, ": ", FormatError(error));
}

}  // namespace

InteractionView InteractionView::FromProto(const v1::Interaction& interaction) {
  InteractionView view;
  view.subject_vm = interaction.subject_vm();
  view.program = interaction.program();
  view.uid = interaction.uid();
  view.kind = interaction.kind();
  view.object_vm = interaction.object_vm();
  view.object_name = interaction.object_name();
  return view;
}

bool PolicyAppliesToHost(const v1::Policy& policy, std::string_view host_id) {
  if (policy.hosts().empty()) return true;
  for (const std::string& pattern : policy.hosts()) {
    if (pattern == "*") return true;
    internal::NamePattern p = internal::SplitPattern(pattern);
    if (p.prefix ? host_id.starts_with(p.literal) : host_id == p.literal) return true;
  }
  return false;
}

CompiledPolicy::CompiledPolicy() : index_(std::make_unique<Index>()) {}
CompiledPolicy::~CompiledPolicy() = default;

absl::StatusOr<std::shared_ptr<const CompiledPolicy>> CompiledPolicy::Compile(
    const v1::PolicyBundle& bundle, std::string_view host_id) {
  std::shared_ptr<CompiledPolicy> compiled(new CompiledPolicy());
  Index& index = *compiled->index_;
  index.version = bundle.version();
  index.bundle.set_version(bundle.version());

  // Select, check, and order the policies (by name: the last tie-break).
  std::vector<const v1::Policy*> selected;
  for (const v1::Policy& policy : bundle.policies()) {
    if (host_id.empty() || PolicyAppliesToHost(policy, host_id)) selected.push_back(&policy);
  }
  std::sort(selected.begin(), selected.end(),
            [](const v1::Policy* a, const v1::Policy* b) { return a->name() < b->name(); });
  std::vector<std::string> problems;
  for (size_t i = 0; i < selected.size(); ++i) {
    if (i > 0 && selected[i]->name() == selected[i - 1]->name()) {
      problems.push_back(Cat("policy '", selected[i]->name(), "' appears more than once"));
    }
    for (const v1::ValidationError& error : ValidatePolicy(*selected[i])) {
      // A host's bundle keeps a policy whose rules all name other hosts' VMs, without rules
      // (push::HostBundle): nothing to compile for it here. Only an authored policy needs one.
      if (selected[i]->rules().empty() && error.field() == "rules") continue;
      problems.push_back(CompileError(*selected[i], error));
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(Join(problems, "\n"));
  }

  size_t rule_total = 0;
  for (const v1::Policy* policy : selected) {
    *index.bundle.add_policies() = *policy;
    rule_total += static_cast<size_t>(policy->rules_size());
  }
  if (rule_total >= UINT32_MAX) return absl::InvalidArgumentError("too many rules");

  // One CompiledRule per rule; `rules` never reallocates after this reserve.
  index.rules.reserve(rule_total);
  std::array<internal::StringMap<BucketBuilder>, kKindCount> builders;
  std::vector<ObjectKey> keys;
  keys.reserve(rule_total);
  uint32_t order = 0;
  for (const v1::Policy& policy : index.bundle.policies()) {
    const bool monitor = policy.mode() == v1::MONITOR;
    for (const v1::Rule& rule : policy.rules()) {
      CompiledRule& r = index.rules.emplace_back();
      r.policy = &policy;
      r.rule = &rule;
      r.enforced = !monitor && !rule.audit_only();
      r.action = rule.action();
      r.verdict = VerdictOf(rule);
      r.subject_specificity = SpecificityOf(rule.subject());
      keys.push_back(ObjectKeyOf(rule.object(), &r.literal_length, &r.exact));
      r.order = order++;
      internal::NamePattern program = internal::SplitPattern(rule.subject().program());
      r.program = program.literal;
      r.program_prefix = program.prefix;
      if (!r.program.empty()) index.uses_programs = true;
      r.has_uid = rule.subject().has_uid();
      if (r.has_uid) index.uses_uids = true;
      r.uid = rule.subject().uid();
      if (!IsAnyVm(rule.object().vm())) r.object_vm = rule.object().vm();
      r.rank = RankOf(r);
    }
  }
  for (size_t i = 0; i < index.rules.size(); ++i) {
    const CompiledRule& r = index.rules[i];
    const ObjectKey& key = keys[i];
    std::string_view vm = IsAnyVm(r.rule->subject().vm()) ? kAnyVm : r.rule->subject().vm();
    for (int kind : r.rule->kinds()) {
      BucketBuilder& builder = builders[static_cast<size_t>(kind)][vm];
      switch (key.type) {
        case ObjectKey::Type::kExact:
          builder.exact[key.key].push_back(&r);
          break;
        case ObjectKey::Type::kPrefix:
          builder.prefix[key.key].push_back(&r);
          break;
        case ObjectKey::Type::kAnyIpPort:
          builder.any_ip_port[key.port].push_back(&r);
          break;
        case ObjectKey::Type::kAnyName:
          builder.any_name.push_back(&r);
          break;
      }
    }
  }
  for (size_t kind = 0; kind < builders.size(); ++kind) {
    index.buckets[kind].reserve(builders[kind].size());
    for (auto& [vm, builder] : builders[kind]) Finish(builder, index.buckets[kind][vm]);
    // No insertion follows, so the pointer stays valid.
    auto any = index.buckets[kind].find(kAnyVm);
    if (any != index.buckets[kind].end()) index.any_vm_bucket[kind] = &any->second;
  }
  return std::shared_ptr<const CompiledPolicy>(std::move(compiled));
}

Verdict CompiledPolicy::Decide(const InteractionView& interaction) const {
  const CompiledRule* best = nullptr;
  ForEachCandidateList(*index_, interaction, [&](const Bucket& bucket, Span span) {
    for (uint32_t i = span.begin; i < span.begin + span.len; ++i) {
      const CompiledRule* r = bucket.entries[i];
      if (best != nullptr && r->rank <= best->rank) return;  // Sorted: nothing better follows.
      if (Passes(*r, interaction)) {
        best = r;
        return;
      }
    }
  });
  return MakeVerdict(interaction, best);
}

Explanation CompiledPolicy::Explain(const InteractionView& interaction) const {
  std::vector<const CompiledRule*> matching;
  ForEachCandidateList(*index_, interaction, [&](const Bucket& bucket, Span span) {
    for (uint32_t i = span.begin; i < span.begin + span.len; ++i) {
      if (Passes(*bucket.entries[i], interaction)) matching.push_back(bucket.entries[i]);
    }
  });
  std::sort(matching.begin(), matching.end(),
            [](const CompiledRule* a, const CompiledRule* b) { return a->rank > b->rank; });
  Explanation out;
  out.verdict = MakeVerdict(interaction, matching.empty() ? nullptr : matching.front());
  for (size_t i = 1; i < matching.size(); ++i) {
    out.losers.push_back({matching[i], WhyLost(*matching[i], *matching.front())});
  }
  return out;
}

v1::Decision CompiledPolicy::ToProto(const Verdict& verdict) const {
  v1::Decision out;
  out.set_verdict(verdict.verdict);
  out.set_scope(verdict.scope);
  out.set_policy_version(index_->version);
  out.set_enforced(verdict.enforced);
  if (verdict.rule == nullptr) {
    out.set_reason(std::string(verdict.reason));
    return out;
  }
  const v1::Rule& rule = *verdict.rule->rule;
  const v1::Policy& policy = *verdict.rule->policy;
  out.set_policy(policy.name());
  out.set_rule(rule.name());
  if (verdict.verdict == v1::VERDICT_REDIRECT) *out.mutable_redirect() = rule.redirect();
  std::string reason =
      Cat("rule ", policy.name(), "/", rule.name(), ": ", ActionName(rule.action()));
  if (rule.action() == v1::ASK) {
    Append(&reason, " (fail ", FailModeName(rule.ask().fail_mode()), ")");
  }
  if (!verdict.enforced) {
    Append(&reason, policy.mode() == v1::MONITOR ? "; not enforced: policy in monitor mode"
                                                 : "; not enforced: audit_only rule");
  }
  out.set_reason(std::move(reason));
  return out;
}

uint64_t CompiledPolicy::version() const { return index_->version; }
size_t CompiledPolicy::rule_count() const { return index_->rules.size(); }
const std::vector<CompiledRule>& CompiledPolicy::rules() const { return index_->rules; }
bool CompiledPolicy::uses_programs() const { return index_->uses_programs; }
bool CompiledPolicy::uses_uids() const { return index_->uses_uids; }
bool CompiledPolicy::has_rules_for(v1::InteractionKind kind) const {
  const size_t k = static_cast<size_t>(kind);
  return k < index_->buckets.size() && !index_->buckets[k].empty();
}

}  // namespace shuttle::policy
