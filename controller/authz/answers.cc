#include "controller/authz/answers.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "policy/parser.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;

constexpr char kAnyVm[] = "*";
constexpr size_t kMaxIdLength = 64;
constexpr size_t kMaxVmLength = 128;
constexpr size_t kMaxObjectLength = 4096;
constexpr size_t kMaxNoteLength = 1024;

// [A-Za-z0-9][A-Za-z0-9._-]*, 1 to max_length characters.
bool IsName(absl::string_view name, size_t max_length) {
  if (name.empty() || name.size() > max_length) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
  }
  return true;
}

absl::Status CheckVm(absl::string_view field, std::string& vm) {
  if (vm.empty()) vm.push_back(kAnyVm[0]);  // Not `vm = kAnyVm`: g++ 12 -Wrestrict false positive.
  if (vm == kAnyVm || vm == "host" || IsName(vm, kMaxVmLength)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " '", absl::CHexEscape(vm.substr(0, kMaxVmLength)),
                   "' is not a VM name ([A-Za-z0-9][A-Za-z0-9._-]*, at most ", kMaxVmLength,
                   " characters), \"host\" or \"*\""));
}

absl::Duration ToDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

absl::Time ToTime(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

google::protobuf::Duration ToProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

// "web unix-connect db:/run/db.sock": how answers and interactions are named in reasons.
std::string Describe(absl::string_view subject_vm, v1::InteractionKind kind,
                     absl::string_view object_vm, absl::string_view object) {
  return absl::StrCat(subject_vm, " ", std::string(policy::KindName(kind)), " ",
                      object_vm.empty() ? "?" : object_vm, ":", object);
}

std::string BucketKey(absl::string_view subject_vm, int kind) {
  return absl::StrCat(subject_vm, absl::string_view("\0", 1), kind);
}

v1::Scope ScopeOf(const v1::Interaction& interaction) {
  const std::string& subject = interaction.subject_vm();
  // Unknown object VM: the call reaches the caller's own VM's object (as in policy/matcher.h).
  const std::string& object =
      interaction.object_vm().empty() ? interaction.subject_vm() : interaction.object_vm();
  if (subject == object) return v1::INTRA_VM;
  if (subject == "host") return v1::HOST_VM;
  if (object == "host") return v1::VM_HOST;
  return v1::CROSS_VM;
}

std::string NewAnswerId() {
  unsigned char bytes[4];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    SHUTTLE_LOG(ERROR) << "RAND_bytes failed";
    std::abort();  // A CSPRNG failure is a broken invariant of the process.
  }
  return absl::StrCat("ans-", absl::BytesToHexString(absl::string_view(
                                  reinterpret_cast<const char*>(bytes), sizeof(bytes))));
}

}  // namespace

bool GlobMatch(absl::string_view pattern, absl::string_view name) {
  size_t p = 0;
  size_t n = 0;
  // Where the last '*' was, and the name position it is currently made to cover up to.
  size_t star = absl::string_view::npos;
  size_t star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (p < pattern.size() && pattern[p] == name[n]) {
      ++p;
      ++n;
    } else if (star != absl::string_view::npos) {
      // Let the last '*' take one more character and try again from there.
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::Status ValidateStandingAnswer(v1::StandingAnswer& answer, absl::Time now,
                                    const AnswerOptions& options) {
  if (!answer.id().empty() && !IsName(answer.id(), kMaxIdLength)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "answer id '", absl::CHexEscape(answer.id().substr(0, kMaxIdLength)), "' must be 1 to ",
        kMaxIdLength, " of [A-Za-z0-9._-], starting with a letter or digit"));
  }
  SHUTTLE_RETURN_IF_ERROR(CheckVm("subject_vm", *answer.mutable_subject_vm()));
  SHUTTLE_RETURN_IF_ERROR(CheckVm("object_vm", *answer.mutable_object_vm()));
  if (answer.kind() == v1::INTERACTION_KIND_UNSPECIFIED ||
      !v1::InteractionKind_IsValid(answer.kind())) {
    return absl::InvalidArgumentError(
        absl::StrCat("kind is required (unix-connect, tcp-connect, ...), got ", answer.kind()));
  }
  if (answer.object().empty()) {
    return absl::InvalidArgumentError("object is required: a name, or a glob such as /run/*");
  }
  if (answer.object().size() > kMaxObjectLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("object is ", answer.object().size(), " bytes, more than ", kMaxObjectLength));
  }
  if (answer.verdict() != v1::VERDICT_ALLOW && answer.verdict() != v1::VERDICT_DENY) {
    return absl::InvalidArgumentError(absl::StrCat(
        "verdict must be allow or deny, not ", std::string(policy::VerdictName(answer.verdict()))));
  }
  if (answer.has_ttl()) {
    const absl::Duration ttl = ToDuration(answer.ttl());
    if (answer.ttl().nanos() < 0 || answer.ttl().nanos() >= 1'000'000'000 ||
        ttl <= absl::ZeroDuration() || ttl > options.max_ttl) {
      return absl::InvalidArgumentError(absl::StrCat("ttl must be in (0, ",
                                                     absl::FormatDuration(options.max_ttl),
                                                     "], not ", absl::FormatDuration(ttl)));
    }
  }
  if (answer.has_expires()) {
    if (answer.expires().nanos() < 0 || answer.expires().nanos() >= 1'000'000'000 ||
        answer.expires().seconds() > TimeUtil::kTimestampMaxSeconds) {
      return absl::InvalidArgumentError("expires is not a valid time");
    }
    if (ToTime(answer.expires()) <= now) {
      return absl::InvalidArgumentError(
          absl::StrCat("expires ", absl::FormatTime(ToTime(answer.expires()), absl::UTCTimeZone()),
                       " is not in the future"));
    }
  }
  if (answer.note().size() > kMaxNoteLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("note is ", answer.note().size(), " bytes, more than ", kMaxNoteLength));
  }
  return absl::OkStatus();
}

// ----- AnswerSet -------------------------------------------------------------------------------

AnswerSet::AnswerSet(std::vector<v1::StandingAnswer> answers) : answers_(std::move(answers)) {
  std::sort(
      answers_.begin(), answers_.end(),
      [](const v1::StandingAnswer& a, const v1::StandingAnswer& b) { return a.id() < b.id(); });
  for (const v1::StandingAnswer& answer : answers_) {
    Entry entry{&answer,
                answer.object().size() - static_cast<size_t>(std::count(
                                             answer.object().begin(), answer.object().end(), '*')),
                answer.object_vm() == kAnyVm, answer.verdict() == v1::VERDICT_DENY};
    Bucket& bucket = buckets_[BucketKey(answer.subject_vm(), answer.kind())];
    if (entry.literal_chars == answer.object().size()) {
      bucket.exact[answer.object()].push_back(entry);
    } else {
      bucket.globs.push_back(entry);
    }
  }
  for (auto& [key, bucket] : buckets_) {
    for (auto& [name, entries] : bucket.exact) {
      std::stable_sort(entries.begin(), entries.end(), MoreSpecific);
    }
    std::stable_sort(bucket.globs.begin(), bucket.globs.end(), MoreSpecific);
  }
}

bool AnswerSet::MoreSpecific(const Entry& a, const Entry& b) {
  return std::make_tuple(a.literal_chars, !a.any_object_vm, a.deny) >
         std::make_tuple(b.literal_chars, !b.any_object_vm, b.deny);
}

bool AnswerSet::Usable(const Entry& entry, const v1::Interaction& interaction, absl::Time now) {
  if (!entry.any_object_vm && entry.answer->object_vm() != interaction.object_vm()) return false;
  return !entry.answer->has_expires() || ToTime(entry.answer->expires()) > now;
}

const v1::StandingAnswer* AnswerSet::MatchBucket(const Bucket& bucket,
                                                 const v1::Interaction& interaction,
                                                 absl::Time now) const {
  if (auto it = bucket.exact.find(interaction.object_name()); it != bucket.exact.end()) {
    for (const Entry& entry : it->second) {
      if (Usable(entry, interaction, now)) return entry.answer;
    }
  }
  for (const Entry& entry : bucket.globs) {
    if (Usable(entry, interaction, now) &&
        GlobMatch(entry.answer->object(), interaction.object_name())) {
      return entry.answer;
    }
  }
  return nullptr;
}

const v1::StandingAnswer* AnswerSet::Match(const v1::Interaction& interaction,
                                           absl::Time now) const {
  for (absl::string_view subject :
       {absl::string_view(interaction.subject_vm()), absl::string_view(kAnyVm)}) {
    auto it = buckets_.find(BucketKey(subject, interaction.kind()));
    if (it == buckets_.end()) continue;
    if (const v1::StandingAnswer* answer = MatchBucket(it->second, interaction, now)) {
      return answer;
    }
  }
  return nullptr;
}

// ----- AnswerAuthority -------------------------------------------------------------------------

AnswerAuthority::AnswerAuthority(Store& store, Clock& clock, AnswerOptions options)
    : store_(store),
      clock_(clock),
      options_(options),
      snapshot_(std::make_shared<const AnswerSet>(std::vector<v1::StandingAnswer>{})) {}

absl::Status AnswerAuthority::Load() {
  absl::MutexLock lock(&write_mu_);
  return Reload();
}

absl::Status AnswerAuthority::Reload() {
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<v1::StandingAnswer> answers, store_.ListStandingAnswers());
  auto next = std::make_shared<const AnswerSet>(std::move(answers));
  absl::MutexLock lock(&snapshot_mu_);
  snapshot_ = std::move(next);
  return absl::OkStatus();
}

std::shared_ptr<const AnswerSet> AnswerAuthority::Snapshot() const {
  absl::MutexLock lock(&snapshot_mu_);
  return snapshot_;
}

absl::StatusOr<v1::PutAnswerResponse> AnswerAuthority::Put(v1::StandingAnswer answer,
                                                           const std::string& author) {
  const absl::Time now = clock_.Now();
  SHUTTLE_RETURN_IF_ERROR(ValidateStandingAnswer(answer, now, options_));
  answer.set_author(author);
  *answer.mutable_created() = ToProto(now);
  absl::MutexLock lock(&write_mu_);
  if (answer.id().empty()) {
    // Reread: another replica may have written since the snapshot.
    SHUTTLE_ASSIGN_OR_RETURN(std::vector<v1::StandingAnswer> stored, store_.ListStandingAnswers());
    for (const v1::StandingAnswer& other : stored) {
      if (other.subject_vm() == answer.subject_vm() && other.kind() == answer.kind() &&
          other.object_vm() == answer.object_vm() && other.object() == answer.object()) {
        answer.set_id(other.id());
      }
    }
    while (answer.id().empty()) {
      std::string id = NewAnswerId();
      if (std::none_of(stored.begin(), stored.end(),
                       [&](const v1::StandingAnswer& a) { return a.id() == id; })) {
        answer.set_id(id);
      }
    }
  }
  bool replaced = false;
  SHUTTLE_RETURN_IF_ERROR(store_.PutStandingAnswer(answer, &replaced));
  SHUTTLE_RETURN_IF_ERROR(Reload());
  SHUTTLE_LOG(INFO) << author << (replaced ? " replaced" : " added") << " standing answer "
                    << answer.id() << ": "
                    << Describe(answer.subject_vm(), answer.kind(), answer.object_vm(),
                                answer.object())
                    << " -> " << policy::VerdictName(answer.verdict());
  v1::PutAnswerResponse response;
  *response.mutable_answer() = std::move(answer);
  response.set_replaced(replaced);
  return response;
}

absl::StatusOr<v1::ListAnswersResponse> AnswerAuthority::List() {
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<v1::StandingAnswer> answers, store_.ListStandingAnswers());
  v1::ListAnswersResponse response;
  for (v1::StandingAnswer& answer : answers) *response.add_answers() = std::move(answer);
  return response;
}

absl::StatusOr<v1::DeleteAnswerResponse> AnswerAuthority::Delete(const std::string& id) {
  absl::MutexLock lock(&write_mu_);
  SHUTTLE_ASSIGN_OR_RETURN(v1::StandingAnswer removed, store_.DeleteStandingAnswer(id));
  SHUTTLE_RETURN_IF_ERROR(Reload());
  SHUTTLE_LOG(INFO) << "removed standing answer " << id;
  v1::DeleteAnswerResponse response;
  *response.mutable_answer() = std::move(removed);
  return response;
}

absl::StatusOr<v1::AuthorizeResponse> AnswerAuthority::Authorize(
    const std::string& caller_host, const v1::AuthorizeRequest& request) const {
  const v1::Interaction& interaction = request.interaction();
  if (interaction.host_id() != caller_host) {
    return absl::PermissionDeniedError(absl::StrCat(
        "certificate names host '", caller_host, "' but the interaction is from host '",
        absl::CHexEscape(interaction.host_id()), "': an agent may ask only for its own host"));
  }
  if (interaction.subject_vm().empty() || interaction.subject_vm() == kAnyVm) {
    return absl::InvalidArgumentError("interaction.subject_vm is required (a VM name or \"host\")");
  }
  if (interaction.kind() == v1::INTERACTION_KIND_UNSPECIFIED ||
      !v1::InteractionKind_IsValid(interaction.kind())) {
    return absl::InvalidArgumentError(
        absl::StrCat("interaction.kind is required, got ", interaction.kind()));
  }
  const absl::Time now = clock_.Now();
  std::shared_ptr<const AnswerSet> snapshot = Snapshot();
  const v1::StandingAnswer* answer = snapshot->Match(interaction, now);

  v1::AuthorizeResponse response;
  v1::Decision& decision = *response.mutable_decision();
  decision.set_scope(ScopeOf(interaction));
  decision.set_policy(request.policy());
  decision.set_rule(request.rule());
  decision.set_policy_version(request.policy_version());
  decision.set_enforced(true);
  absl::Duration ttl = options_.default_ttl;
  if (answer == nullptr) {
    decision.set_verdict(v1::VERDICT_DENY);
    decision.set_reason(absl::StrCat("no standing answer for ",
                                     Describe(interaction.subject_vm(), interaction.kind(),
                                              interaction.object_vm(), interaction.object_name()),
                                     ": denied"));
  } else {
    decision.set_verdict(answer->verdict());
    decision.set_reason(absl::StrCat(
        "standing answer ", answer->id(), " (",
        Describe(answer->subject_vm(), answer->kind(), answer->object_vm(), answer->object()),
        "): ", std::string(policy::VerdictName(answer->verdict()))));
    if (answer->has_ttl()) ttl = ToDuration(answer->ttl());
    if (answer->has_expires()) ttl = std::min(ttl, ToTime(answer->expires()) - now);
  }
  *response.mutable_ttl() = ToProto(ttl);
  return response;
}

}  // namespace shuttle::controller
