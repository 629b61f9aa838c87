// YAML policy files -> v1::Policy. The reader below checks only the shape of the document
// (types, keys, enum and duration spellings) and records where each field is; everything about
// meaning is left to internal::CheckPolicy(), which ValidatePolicy() runs on network bundles too.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "policy/parser.h"
#include "policy/validate_internal.h"
#include "yaml-cpp/depthguard.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace shuttle::policy {
namespace {

using internal::Cat;
using internal::ErrorList;
using internal::Join;
using internal::Quote;
using internal::SourcePos;
using KeyList = std::span<const std::string_view>;

constexpr std::string_view kPolicyKeys[] = {"name", "mode", "description", "hosts", "rules"};
constexpr std::string_view kRuleKeys[] = {"name",       "subject",  "kind",     "kinds",
                                          "object",     "action",   "redirect", "ask",
                                          "audit_only", "writable", "env"};
constexpr std::string_view kSubjectKeys[] = {"vm", "program", "uid"};
constexpr std::string_view kObjectKeys[] = {"vm",   "path",    "abstract", "address",
                                            "name", "program", "service"};
constexpr std::string_view kRedirectKeys[] = {"vm", "name"};
constexpr std::string_view kAskKeys[] = {"ttl", "offline_ttl", "timeout", "fail"};

SourcePos PosOf(const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0 || mark.column < 0) return {};
  return {static_cast<uint32_t>(mark.line) + 1, static_cast<uint32_t>(mark.column) + 1};
}

std::string_view TypeName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a single value";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// Levenshtein distance, for "did you mean" hints on short words.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The closest candidate within reach of a misspelt `word`, or "".
std::string_view Closest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::string_view best;
  size_t best_distance = SIZE_MAX;
  if (word.size() <= 64) {
    for (std::string_view candidate : candidates) {
      // Close enough: a few edits for the length (two, or a third of the longer word), or a
      // truncation ("prog" for "program").
      size_t reach = std::max<size_t>(2, std::max(word.size(), candidate.size()) / 3);
      size_t d = EditDistance(word, candidate);
      bool truncated = word.size() >= 2 && candidate.substr(0, word.size()) == word;
      if ((d <= reach || truncated) && d < best_distance) {
        best = candidate;
        best_distance = d;
      }
    }
  }
  return best;
}

// " (did you mean 'x'?)" for the closest candidate within reach, else "; expected one of: ...".
std::string Suggest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::string_view best = Closest(word, candidates);
  if (!best.empty()) return Cat(" (did you mean '", best, "'?)");
  return Cat("; expected one of: ", Join(candidates, ", "));
}

struct Entry {
  YAML::Node key;
  YAML::Node value;
};

// One map's entries by key, after the checks every map gets.
class MapEntries {
 public:
  const Entry* Find(std::string_view key) const {
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : &it->second;
  }
  void Put(const std::string& key, const Entry& entry) { entries_.emplace(key, entry); }

 private:
  internal::StringMap<Entry> entries_;
};

std::string ChildField(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : Cat(parent, ".", key);
}

class Reader {
 public:
  explicit Reader(ErrorList& errors) : errors_(errors) {}

  void ReadPolicy(const YAML::Node& root, v1::Policy& policy) {
    errors_.SetPosition("", PosOf(root.Mark()));
    std::optional<MapEntries> map = ReadMap(root, "", kPolicyKeys, /*null_is_empty=*/false);
    if (!map) return;
    if (const Entry* e = map->Find("name")) ReadString(*e, "name", policy.mutable_name());
    policy.set_mode(v1::ENFORCE);
    if (const Entry* e = map->Find("mode")) {
      std::string text;
      if (ReadString(*e, "mode", &text)) {
        if (std::optional<v1::PolicyMode> mode = ParsePolicyModeName(text)) {
          policy.set_mode(*mode);
        } else {
          Structural("mode", *e,
                     Cat("unknown mode ", Quote(text), Suggest(text, {"enforce", "monitor"})));
        }
      }
    }
    if (const Entry* e = map->Find("description")) {
      ReadString(*e, "description", policy.mutable_description());
    }
    if (const Entry* e = map->Find("hosts")) {
      ReadStringList(*e, "hosts", policy.mutable_hosts());
    }
    if (const Entry* e = map->Find("rules")) {
      if (e->value.IsSequence()) {
        int index = 0;
        for (const YAML::Node& item : e->value) {
          ReadRule(item, index++, *policy.add_rules());
        }
      } else {
        Structural("rules", *e, Cat("expected a list of rules, found ", TypeName(e->value)));
      }
    }
  }

 private:
  static SourcePos ValuePos(const Entry& e) {
    // A missing value (`key:`) has the mark of whatever follows it; point at the key instead.
    if (e.value.IsNull()) return PosOf(e.key.Mark());
    SourcePos pos = PosOf(e.value.Mark());
    return pos.line == 0 ? PosOf(e.key.Mark()) : pos;
  }

  void Structural(std::string_view field, const Entry& e, std::string message) {
    errors_.AddStructural(field, ValuePos(e), std::move(message));
  }

  // Checks that `node` is a map of single-value keys from `allowed`, each at most once.
  std::optional<MapEntries> ReadMap(const YAML::Node& node, const std::string& field,
                                    KeyList allowed, bool null_is_empty, SourcePos where = {}) {
    if (where.line == 0) where = PosOf(node.Mark());
    if (node.IsNull() && null_is_empty) return MapEntries();
    if (!node.IsMap()) {
      errors_.AddStructural(field, where,
                            Cat("expected a map (key: value lines), found ", TypeName(node)));
      return std::nullopt;
    }
    std::vector<std::string_view> candidates(allowed.begin(), allowed.end());
    MapEntries out;
    std::vector<std::string> misspelt;  // Known keys that an unknown key probably meant.
    for (const auto& item : node) {
      const YAML::Node& key = item.first;
      SourcePos key_pos = PosOf(key.Mark());
      if (!key.IsScalar()) {
        errors_.AddStructural(field, key_pos,
                              Cat("a key must be a single word, found ", TypeName(key)));
        continue;
      }
      const std::string& name = key.Scalar();
      std::string key_field = ChildField(field, name);
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        errors_.AddStructural(key_field, key_pos,
                              Cat("unknown key ", Quote(name), Suggest(name, candidates)));
        std::string_view meant = Closest(name, candidates);
        if (!meant.empty()) misspelt.emplace_back(meant);
        continue;
      }
      if (const Entry* first = out.Find(name)) {
        SourcePos first_pos = PosOf(first->key.Mark());
        errors_.AddStructural(
            key_field, key_pos,
            Cat("duplicate key ", Quote(name), " (first at line ", first_pos.line, ")"));
        continue;
      }
      Entry entry{key, item.second};
      errors_.SetPosition(key_field, ValuePos(entry));
      out.Put(name, entry);
    }
    // A misspelt key is reported once, not again as "missing" under its right name.
    for (const std::string& meant : misspelt) {
      if (out.Find(meant) == nullptr) errors_.Cover(ChildField(field, meant));
    }
    return out;
  }

  bool ReadString(const Entry& e, const std::string& field, std::string* out) {
    if (!e.value.IsScalar()) {
      Structural(field, e, Cat("expected a single value, found ", TypeName(e.value)));
      return false;
    }
    *out = e.value.Scalar();
    return true;
  }

  bool ReadBool(const Entry& e, const std::string& field, bool* out) {
    std::string text;
    if (!ReadString(e, field, &text)) return false;
    if (text == "true" || text == "True" || text == "TRUE") {
      *out = true;
    } else if (text == "false" || text == "False" || text == "FALSE") {
      *out = false;
    } else {
      Structural(field, e, Cat("expected true or false, found ", Quote(text)));
      return false;
    }
    return true;
  }

  void ReadStringList(const Entry& e, const std::string& field,
                      google::protobuf::RepeatedPtrField<std::string>* out) {
    if (!e.value.IsSequence()) {
      Structural(field, e, Cat("expected a list, found ", TypeName(e.value)));
      return;
    }
    int index = 0;
    for (const YAML::Node& item : e.value) {
      std::string item_field = Cat(field, "[", index++, "]");
      Entry item_entry{e.key, item};
      errors_.SetPosition(item_field, ValuePos(item_entry));
      std::string* value = out->Add();
      ReadString(item_entry, item_field, value);
    }
  }

  // Durations: "30s", "5m", "200ms", "1h", "1m30s" (absl::ParseDuration), not negative.
  bool ReadDuration(const Entry& e, const std::string& field, google::protobuf::Duration* out) {
    std::string text;
    if (!ReadString(e, field, &text)) return false;
    absl::Duration d;
    if (!absl::ParseDuration(text, &d) || d == absl::InfiniteDuration() ||
        d == -absl::InfiniteDuration()) {
      bool bare_number = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= '0' && c <= '9') || c == '.';
      });
      Structural(field, e,
                 Cat("bad duration ", Quote(text),
                     bare_number ? " (add a unit: " : " (write it like ", "30s, 5m, 200ms or 1h)"));
      return false;
    }
    if (d < absl::ZeroDuration()) {
      Structural(field, e, Cat("duration ", Quote(text), " must not be negative"));
      return false;
    }
    int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
    out->set_seconds(seconds);
    out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
    return true;
  }

  bool ReadKind(const Entry& e, const std::string& field, v1::InteractionKind* out) {
    std::string text;
    if (!ReadString(e, field, &text)) return false;
    if (std::optional<v1::InteractionKind> kind = ParseKindName(text)) {
      *out = *kind;
      return true;
    }
    std::vector<std::string_view> names;
    for (int k = v1::UNIX_CONNECT; k <= v1::DEPEND; ++k) {
      names.push_back(KindName(static_cast<v1::InteractionKind>(k)));
    }
    Structural(field, e, Cat("unknown kind ", Quote(text), Suggest(text, names)));
    return false;
  }

  void ReadRule(const YAML::Node& node, int index, v1::Rule& rule) {
    std::string at = Cat("rules[", index, "]");
    SourcePos pos = PosOf(node.Mark());
    errors_.SetPosition(at, pos);
    rule.mutable_location()->set_line(pos.line);
    rule.mutable_location()->set_column(pos.column);
    std::optional<MapEntries> map = ReadMap(node, at, kRuleKeys, /*null_is_empty=*/false);
    if (!map) return;
    auto field = [&at](std::string_view name) { return Cat(at, ".", name); };

    if (const Entry* e = map->Find("name")) ReadString(*e, field("name"), rule.mutable_name());

    if (const Entry* e = map->Find("subject")) {
      if (std::optional<MapEntries> subject =
              ReadMap(e->value, field("subject"), kSubjectKeys, true, ValuePos(*e))) {
        v1::SubjectSelector* out = rule.mutable_subject();
        if (const Entry* s = subject->Find("vm")) {
          ReadString(*s, field("subject.vm"), out->mutable_vm());
        }
        if (const Entry* s = subject->Find("program")) {
          ReadString(*s, field("subject.program"), out->mutable_program());
        }
        if (const Entry* s = subject->Find("uid")) ReadUid(*s, field("subject.uid"), out);
      }
    }

    const Entry* kind = map->Find("kind");
    const Entry* kinds = map->Find("kinds");
    if (kind != nullptr && kinds != nullptr) {
      errors_.AddStructural(field("kinds"), PosOf(kinds->key.Mark()),
                            "use either `kind` or `kinds`, not both");
    } else if (kind != nullptr) {
      errors_.SetAlias(field("kinds"), field("kind"));
      errors_.SetAlias(field("kinds[0]"), field("kind"));
      errors_.SetPosition(field("kinds[0]"), ValuePos(*kind));
      v1::InteractionKind value = v1::INTERACTION_KIND_UNSPECIFIED;
      if (kind->value.IsSequence()) {
        Structural(field("kind"), *kind, "`kind` takes one kind; use `kinds: [a, b]` for several");
      } else {
        ReadKind(*kind, field("kind"), &value);
      }
      rule.add_kinds(value);  // A placeholder when unknown, so the rule is still checked.
    } else if (kinds != nullptr) {
      if (!kinds->value.IsSequence()) {
        Structural(field("kinds"), *kinds,
                   Cat("expected a list of kinds, found ", TypeName(kinds->value)));
      } else {
        int i = 0;
        for (const YAML::Node& item : kinds->value) {
          std::string item_field = Cat(at, ".kinds[", i++, "]");
          Entry item_entry{kinds->key, item};
          errors_.SetPosition(item_field, ValuePos(item_entry));
          v1::InteractionKind value = v1::INTERACTION_KIND_UNSPECIFIED;
          ReadKind(item_entry, item_field, &value);
          rule.add_kinds(value);
        }
        if (i == 0) {
          Structural(field("kinds"), *kinds, "`kinds` is empty; name at least one kind");
        }
      }
    } else {
      errors_.SetAlias(field("kinds"), field("kind"));
    }

    if (const Entry* e = map->Find("object")) {
      if (std::optional<MapEntries> object =
              ReadMap(e->value, field("object"), kObjectKeys, true, ValuePos(*e))) {
        v1::ObjectSelector* out = rule.mutable_object();
        const std::pair<std::string_view, std::string*> fields[] = {
            {"vm", out->mutable_vm()},
            {"path", out->mutable_path()},
            {"abstract", out->mutable_abstract()},
            {"address", out->mutable_address()},
            {"name", out->mutable_name()},
            {"program", out->mutable_program()},
            {"service", out->mutable_service()}};
        for (const auto& [key, target] : fields) {
          if (const Entry* o = object->Find(key)) {
            std::string object_field = field(Cat("object.", key));
            if (ReadString(*o, object_field, target) && target->empty()) {
              Structural(object_field, *o,
                         Cat("`", key, "` is empty; leave it out to match any object"));
            }
          }
        }
      }
    }

    if (const Entry* e = map->Find("action")) {
      std::string text;
      if (ReadString(*e, field("action"), &text)) {
        if (std::optional<v1::Action> action = ParseActionName(text)) {
          rule.set_action(*action);
        } else {
          Structural(field("action"), *e,
                     Cat("unknown action ", Quote(text),
                         Suggest(text, {"allow", "deny", "redirect", "ask"})));
        }
      }
    }

    if (const Entry* e = map->Find("redirect")) {
      if (std::optional<MapEntries> redirect =
              ReadMap(e->value, field("redirect"), kRedirectKeys, false, ValuePos(*e))) {
        v1::RedirectTarget* out = rule.mutable_redirect();
        if (const Entry* r = redirect->Find("vm")) {
          ReadString(*r, field("redirect.vm"), out->mutable_vm());
        }
        if (const Entry* r = redirect->Find("name")) {
          ReadString(*r, field("redirect.name"), out->mutable_name());
        }
      }
    }

    if (const Entry* e = map->Find("ask")) {
      if (std::optional<MapEntries> ask =
              ReadMap(e->value, field("ask"), kAskKeys, true, ValuePos(*e))) {
        v1::AskParams* out = rule.mutable_ask();
        if (const Entry* a = ask->Find("ttl")) {
          ReadDuration(*a, field("ask.ttl"), out->mutable_ttl());
        }
        if (const Entry* a = ask->Find("offline_ttl")) {
          ReadDuration(*a, field("ask.offline_ttl"), out->mutable_offline_ttl());
        }
        if (const Entry* a = ask->Find("timeout")) {
          ReadDuration(*a, field("ask.timeout"), out->mutable_timeout());
        }
        if (const Entry* a = ask->Find("fail")) {
          std::string text;
          if (ReadString(*a, field("ask.fail"), &text)) {
            if (std::optional<v1::FailMode> mode = ParseFailModeName(text)) {
              out->set_fail_mode(*mode);
            } else {
              Structural(field("ask.fail"), *a,
                         Cat("unknown fail mode ", Quote(text), Suggest(text, {"closed", "open"})));
            }
          }
        }
      }
    }
    if (rule.action() == v1::ASK) FillAskDefaults(rule.mutable_ask());

    if (const Entry* e = map->Find("audit_only")) {
      bool value = false;
      if (ReadBool(*e, field("audit_only"), &value)) rule.set_audit_only(value);
    }
    if (const Entry* e = map->Find("writable")) {
      bool value = false;
      if (ReadBool(*e, field("writable"), &value)) rule.set_writable(value);
    }
    if (const Entry* e = map->Find("env")) ReadStringList(*e, field("env"), rule.mutable_env());
  }

  static void FillAskDefaults(v1::AskParams* ask) {
    v1::AskParams defaults = DefaultAskParams();
    if (!ask->has_ttl()) *ask->mutable_ttl() = defaults.ttl();
    if (!ask->has_offline_ttl()) *ask->mutable_offline_ttl() = defaults.offline_ttl();
    if (!ask->has_timeout()) *ask->mutable_timeout() = defaults.timeout();
    if (ask->fail_mode() == v1::FAIL_MODE_UNSPECIFIED) ask->set_fail_mode(defaults.fail_mode());
  }

  void ReadUid(const Entry& e, const std::string& field, v1::SubjectSelector* out) {
    std::string text;
    if (!ReadString(e, field, &text)) return;
    uint64_t value = 0;
    bool ok = !text.empty() && text.size() <= 10 &&
              std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (ok) {
      for (char c : text) value = value * 10 + static_cast<uint64_t>(c - '0');
      ok = value <= UINT32_MAX;
    }
    if (!ok) {
      Structural(field, e, Cat("uid must be a number from 0 to 4294967295, not ", Quote(text)));
      return;
    }
    out->set_uid(static_cast<uint32_t>(value));
    out->set_has_uid(true);
  }

  ErrorList& errors_;
};

// Counts the documents of a YAML stream, up to two. yaml-cpp 0.7's LoadAll() never returns on
// some malformed input (a stray ',' at the top level yields empty documents without end, until
// memory runs out), so the stream is checked with a bounded loop first and only then loaded.
class DocumentCounter : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::vector<YAML::Mark> starts;
};

// Loads the one document of `source` (Null if there is none), or reports why not. May throw
// what yaml-cpp throws.
std::optional<YAML::Node> LoadOneDocument(const std::string& source, ErrorList& errors) {
  std::istringstream stream(source);
  YAML::Parser parser(stream);
  DocumentCounter counter;
  while (counter.starts.size() < 2 && parser.HandleNextDocument(counter)) {
  }
  if (counter.starts.size() == 2) {
    const YAML::Mark& first = counter.starts[0];
    const YAML::Mark& second = counter.starts[1];
    if (second.pos == first.pos) {  // The parser made no progress: it is stuck on a token.
      const std::string_view text = source;
      std::string_view at = second.pos >= 0 && static_cast<size_t>(second.pos) < text.size()
                                ? text.substr(static_cast<size_t>(second.pos), 1)
                                : std::string_view();
      errors.AddStructural("", PosOf(second), Cat("YAML syntax: unexpected ", Quote(at)));
    } else {
      errors.AddStructural("", PosOf(second),
                           "more than one YAML document ('---'); put one policy in each file");
    }
    return std::nullopt;
  }
  return YAML::Load(source);
}

google::protobuf::Duration ToProtoDuration(absl::Duration d) {
  google::protobuf::Duration out;
  int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
  return out;
}

absl::Duration FromProtoDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

}  // namespace

v1::AskParams DefaultAskParams() {
  v1::AskParams ask;
  *ask.mutable_ttl() = ToProtoDuration(absl::Seconds(30));
  *ask.mutable_offline_ttl() = ToProtoDuration(absl::Minutes(5));
  *ask.mutable_timeout() = ToProtoDuration(absl::Milliseconds(200));
  ask.set_fail_mode(v1::FAIL_CLOSED);
  return ask;
}

ParseResult ParsePolicyYaml(std::string_view source, std::string_view filename) {
  ErrorList errors{std::string(filename)};
  v1::Policy policy;
  bool read = false;
  try {
    std::optional<YAML::Node> root = LoadOneDocument(std::string(source), errors);
    if (root && root->IsNull()) {
      errors.AddStructural("", {1, 1}, "the file is empty; expected a policy (name:, rules:, ...)");
    } else if (root) {
      Reader(errors).ReadPolicy(*root, policy);
      read = true;
    }
  } catch (const YAML::DeepRecursion& e) {
    errors.AddStructural("", PosOf(e.mark), "YAML nested too deeply");
  } catch (const YAML::Exception& e) {
    errors.AddStructural("", PosOf(e.mark), Cat("YAML syntax: ", e.msg));
  } catch (const std::exception& e) {
    errors.AddStructural("", {}, Cat("could not read the file: ", e.what()));
  } catch (...) {
    errors.AddStructural("", {}, "could not read the file");
  }
  if (read) {
    for (v1::Rule& rule : *policy.mutable_rules()) {
      rule.mutable_location()->set_file(std::string(filename));
    }
    // The semantic checks run on whatever was read; the error list drops what would only repeat
    // a structural error (e.g. "action required" after "unknown action 'alow'").
    internal::CheckPolicy(policy, errors);
  }
  ParseResult result;
  if (!errors.empty()) {
    result.errors = errors.Take();
    return result;
  }
  result.policy = std::move(policy);
  return result;
}

absl::StatusOr<v1::Policy> ParsePolicyOrStatus(std::string_view source, std::string_view filename) {
  ParseResult result = ParsePolicyYaml(source, filename);
  if (!result.errors.empty()) return ErrorsToStatus(result.errors);
  return *std::move(result.policy);
}

// ---------------------------------------------------------------------------------------------
// PolicyToYaml

namespace {

std::string FormatDuration(const google::protobuf::Duration& d) {
  return absl::FormatDuration(FromProtoDuration(d));
}

void EmitIfSet(YAML::Emitter& out, std::string_view key, const std::string& value) {
  if (value.empty()) return;
  out << YAML::Key << std::string(key) << YAML::Value << value;
}

}  // namespace

std::string PolicyToYaml(const v1::Policy& policy) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << policy.name();
  out << YAML::Key << "mode" << YAML::Value << std::string(PolicyModeName(policy.mode()));
  EmitIfSet(out, "description", policy.description());
  if (!policy.hosts().empty()) {
    out << YAML::Key << "hosts" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const std::string& host : policy.hosts()) out << host;
    out << YAML::EndSeq;
  }
  out << YAML::Key << "rules" << YAML::Value << YAML::BeginSeq;
  for (const v1::Rule& rule : policy.rules()) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << rule.name();
    const v1::SubjectSelector& subject = rule.subject();
    if (!subject.vm().empty() || !subject.program().empty() || subject.has_uid()) {
      out << YAML::Key << "subject" << YAML::Value << YAML::Flow << YAML::BeginMap;
      EmitIfSet(out, "vm", subject.vm());
      EmitIfSet(out, "program", subject.program());
      if (subject.has_uid()) out << YAML::Key << "uid" << YAML::Value << subject.uid();
      out << YAML::EndMap;
    }
    if (rule.kinds_size() == 1) {
      out << YAML::Key << "kind" << YAML::Value << std::string(KindName(rule.kinds(0)));
    } else {
      out << YAML::Key << "kinds" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (int kind : rule.kinds()) {
        out << std::string(KindName(static_cast<v1::InteractionKind>(kind)));
      }
      out << YAML::EndSeq;
    }
    const v1::ObjectSelector& object = rule.object();
    if (rule.has_object() && (!object.vm().empty() || internal::ObjectNameOf(object).field !=
                                                          internal::ObjectField::kNone)) {
      out << YAML::Key << "object" << YAML::Value << YAML::Flow << YAML::BeginMap;
      EmitIfSet(out, "vm", object.vm());
      EmitIfSet(out, "path", object.path());
      EmitIfSet(out, "abstract", object.abstract());
      EmitIfSet(out, "address", object.address());
      EmitIfSet(out, "name", object.name());
      EmitIfSet(out, "program", object.program());
      EmitIfSet(out, "service", object.service());
      out << YAML::EndMap;
    }
    out << YAML::Key << "action" << YAML::Value << std::string(ActionName(rule.action()));
    if (rule.has_redirect()) {
      out << YAML::Key << "redirect" << YAML::Value << YAML::Flow << YAML::BeginMap;
      EmitIfSet(out, "vm", rule.redirect().vm());
      EmitIfSet(out, "name", rule.redirect().name());
      out << YAML::EndMap;
    }
    if (rule.has_ask()) {
      const v1::AskParams& ask = rule.ask();
      out << YAML::Key << "ask" << YAML::Value << YAML::Flow << YAML::BeginMap;
      if (ask.has_ttl()) out << YAML::Key << "ttl" << YAML::Value << FormatDuration(ask.ttl());
      if (ask.has_offline_ttl()) {
        out << YAML::Key << "offline_ttl" << YAML::Value << FormatDuration(ask.offline_ttl());
      }
      if (ask.has_timeout()) {
        out << YAML::Key << "timeout" << YAML::Value << FormatDuration(ask.timeout());
      }
      if (ask.fail_mode() != v1::FAIL_MODE_UNSPECIFIED) {
        out << YAML::Key << "fail" << YAML::Value << std::string(FailModeName(ask.fail_mode()));
      }
      out << YAML::EndMap;
    }
    if (rule.audit_only()) out << YAML::Key << "audit_only" << YAML::Value << true;
    if (rule.writable()) out << YAML::Key << "writable" << YAML::Value << true;
    if (!rule.env().empty()) {
      out << YAML::Key << "env" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const std::string& name : rule.env()) out << name;
      out << YAML::EndSeq;
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace shuttle::policy
