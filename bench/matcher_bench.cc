// CompiledPolicy::Decide() at 10, 1,000 and 100,000 rules. The rules look like a fleet's: many
// VMs and kinds, exact names and prefixes, program- and uid-specific rules, several policies, and
// one large bucket (VM "web", unix-connect) that the looked-up interactions fall into. The point
// is that the cost of a lookup does not grow with the number of rules. A few rules are in every
// fleet (the planted rule of the hit case, two global rules), so that the smallest fleet has the
// same buckets as the largest and the lookups do the same steps.
//   BM_DecideHit:   one interaction that a planted rule in the large bucket decides.
//   BM_DecideMiss:  the large bucket, a name close to many rules', and no rule matches.
//   BM_DecideMixed: 4,096 different interactions that hit random rules, in turn (less cache-warm).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "policy/matcher.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::policy {
namespace {

constexpr int kRulesPerPolicy = 1000;

struct Fleet {
  std::shared_ptr<const CompiledPolicy> compiled;
  std::vector<v1::Interaction> hits;  // One per sampled rule.
};

// Deterministic: the same rules for the same count on every run.
Fleet MakeFleet(int rule_count) {
  std::mt19937 rng(12345);
  auto chance = [&rng](int percent) { return static_cast<int>(rng() % 100) < percent; };
  const int vm_count = std::max(2, rule_count / 50);
  const int program_count = 50;
  v1::PolicyBundle bundle;
  bundle.set_version(1);
  Fleet fleet;

  v1::Policy* policy = nullptr;
  for (int i = 0; i < rule_count; ++i) {
    if (i % kRulesPerPolicy == 0) {
      policy = bundle.add_policies();
      policy->set_name("policy-" + std::to_string(i / kRulesPerPolicy));
    }
    v1::Rule* rule = policy->add_rules();
    rule->set_name("rule-" + std::to_string(i));
    // Subject: a fifth in the large "web" bucket, a tenth global, the rest over many VMs.
    v1::SubjectSelector* subject = rule->mutable_subject();
    int where = static_cast<int>(rng() % 100);
    if (where < 20) {
      subject->set_vm("web");
    } else if (where >= 30) {
      subject->set_vm("vm-" + std::to_string(rng() % vm_count));
    }
    if (chance(30)) {
      int program = static_cast<int>(rng() % program_count);
      subject->set_program(chance(70) ? "/usr/bin/prog-" + std::to_string(program)
                                      : "/opt/app-" + std::to_string(program) + "/*");
    }
    if (chance(10)) {
      subject->set_uid(1000 + rng() % 10);
      subject->set_has_uid(true);
    }
    // Kind and object name.
    v1::ObjectSelector* object = rule->mutable_object();
    object->set_vm(chance(80) ? "vm-" + std::to_string(rng() % vm_count) : "");
    int kind = static_cast<int>(rng() % 100);
    const int service = static_cast<int>(rng() % (rule_count + 10));
    if (kind < 45 || where < 20) {
      rule->add_kinds(v1::UNIX_CONNECT);
      int shape = static_cast<int>(rng() % 100);
      if (shape < 70 || where >= 30) {
        object->set_path("/run/svc-" + std::to_string(service) + "/sock-" +
                         std::to_string(rng() % 4));
      } else {
        object->set_path("/run/svc-" + std::to_string(service) + "/*");
      }
    } else if (kind < 70) {
      rule->add_kinds(v1::TCP_CONNECT);
      if (chance(50)) rule->add_kinds(v1::UDP_SEND);
      int port = 1024 + service % 60000;
      int shape = static_cast<int>(rng() % 100);
      object->set_address(shape < 70   ? "127.0.0.1:" + std::to_string(port)
                          : shape < 90 ? "*:" + std::to_string(port)
                                       : "127.0.0." + std::to_string(1 + rng() % 9) + ":*");
    } else if (kind < 80) {
      rule->add_kinds(chance(50) ? v1::SHM_OPEN : v1::MQ_OPEN);
      object->set_name("/shm-" + std::to_string(service) + (chance(30) ? "*" : ""));
    } else if (kind < 85) {
      rule->add_kinds(v1::FIFO_OPEN);
      object->set_path("/var/lib/app-" + std::to_string(service) + "/fifo");
    } else if (kind < 92) {
      rule->add_kinds(v1::INVOKE);
      object->set_program("/usr/bin/tool-" + std::to_string(service % 500));
    } else {
      rule->add_kinds(v1::SIGNAL);
    }
    int action = static_cast<int>(rng() % 100);
    rule->set_action(action < 50 ? v1::ALLOW : action < 85 ? v1::DENY : v1::ASK);
    if (rule->action() == v1::ASK) rule->mutable_ask()->set_fail_mode(v1::FAIL_CLOSED);

    // Sample interactions that this rule matches, for BM_DecideMixed.
    if (fleet.hits.size() < 4096 && rule->kinds(0) == v1::UNIX_CONNECT) {
      v1::Interaction in;
      in.set_subject_vm(subject->vm().empty() ? "vm-0" : subject->vm());
      std::string program = subject->program();
      if (!program.empty() && program.back() == '*') program.replace(program.size() - 1, 1, "bin");
      in.set_program(program.empty() ? "/usr/bin/other" : program);
      in.set_uid(subject->has_uid() ? subject->uid() : 1000);
      in.set_kind(v1::UNIX_CONNECT);
      in.set_object_vm(object->vm().empty() ? "vm-1" : object->vm());
      std::string path = object->path();
      if (path.back() == '*') path.replace(path.size() - 1, 1, "sock-9");
      in.set_object_name(path);
      fleet.hits.push_back(std::move(in));
    }
  }
  // The planted rule of the paper's case, in the large bucket.
  v1::Rule* planted = bundle.mutable_policies(0)->add_rules();
  planted->set_name("php-to-postgres");
  planted->mutable_subject()->set_vm("web");
  planted->mutable_subject()->set_program("/usr/sbin/php-fpm*");
  planted->add_kinds(v1::UNIX_CONNECT);
  planted->mutable_object()->set_vm("db");
  planted->mutable_object()->set_path("/run/postgresql/.s.PGSQL.5432");
  planted->set_action(v1::ALLOW);

  // Rules every fleet has, whatever its size, so that the same buckets exist at 10 rules as at
  // 100,000 and the sizes compare like for like: global rules (the "*" bucket) with an exact
  // name and a prefix.
  v1::Rule* docker = bundle.mutable_policies(0)->add_rules();
  docker->set_name("nobody-reaches-docker");
  docker->add_kinds(v1::UNIX_CONNECT);
  docker->mutable_object()->set_path("/run/docker.sock");
  docker->set_action(v1::DENY);
  v1::Rule* user = bundle.mutable_policies(0)->add_rules();
  user->set_name("user-sessions");
  user->add_kinds(v1::UNIX_CONNECT);
  user->mutable_object()->set_vm("host");
  user->mutable_object()->set_path("/run/user/*");
  user->set_action(v1::ASK);

  absl::StatusOr<std::shared_ptr<const CompiledPolicy>> compiled = CompiledPolicy::Compile(bundle);
  if (!compiled.ok()) {
    fprintf(stderr, "compile: %s\n", compiled.status().ToString().c_str());
    std::abort();
  }
  fleet.compiled = *std::move(compiled);
  return fleet;
}

const Fleet& FleetOf(int rule_count) {
  static auto* fleets = new std::map<int, Fleet>();
  auto it = fleets->find(rule_count);
  if (it == fleets->end()) it = fleets->emplace(rule_count, MakeFleet(rule_count)).first;
  return it->second;
}

void Run(benchmark::State& state, const v1::Interaction& interaction, bool expect_rule) {
  const Fleet& fleet = FleetOf(static_cast<int>(state.range(0)));
  InteractionView view = InteractionView::FromProto(interaction);
  Verdict check = fleet.compiled->Decide(view);
  if ((check.rule != nullptr) != expect_rule) {
    state.SkipWithError(expect_rule ? "expected a rule to match" : "expected no rule to match");
    return;
  }
  for (auto _ : state) {
    Verdict v = fleet.compiled->Decide(view);
    benchmark::DoNotOptimize(v);
  }
  state.counters["rules"] = static_cast<double>(fleet.compiled->rule_count());
  state.SetItemsProcessed(state.iterations());
}

void BM_DecideHit(benchmark::State& state) {
  v1::Interaction in;
  in.set_subject_vm("web");
  in.set_program("/usr/sbin/php-fpm8.2");
  in.set_uid(33);
  in.set_kind(v1::UNIX_CONNECT);
  in.set_object_vm("db");
  in.set_object_name("/run/postgresql/.s.PGSQL.5432");
  Run(state, in, /*expect_rule=*/true);
}

void BM_DecideMiss(benchmark::State& state) {
  v1::Interaction in;
  in.set_subject_vm("web");
  in.set_program("/usr/bin/curl");
  in.set_uid(33);
  in.set_kind(v1::UNIX_CONNECT);
  in.set_object_vm("db");
  in.set_object_name("/run/svc-1x/no-such-socket");  // Near "/run/svc-1*" names, matching none.
  Run(state, in, /*expect_rule=*/false);
}

void BM_DecideMixed(benchmark::State& state) {
  const Fleet& fleet = FleetOf(static_cast<int>(state.range(0)));
  std::vector<InteractionView> views;
  for (const v1::Interaction& in : fleet.hits) views.push_back(InteractionView::FromProto(in));
  size_t matched = 0;
  for (const InteractionView& view : views) matched += fleet.compiled->Decide(view).rule != nullptr;
  if (views.empty() || matched != views.size()) {
    state.SkipWithError("every sampled interaction should match a rule");
    return;
  }
  size_t i = 0;
  for (auto _ : state) {
    Verdict v = fleet.compiled->Decide(views[i]);
    benchmark::DoNotOptimize(v);
    if (++i == views.size()) i = 0;
  }
  state.counters["rules"] = static_cast<double>(fleet.compiled->rule_count());
  state.counters["distinct"] = static_cast<double>(views.size());
  state.SetItemsProcessed(state.iterations());
}

void BM_Compile(benchmark::State& state) {
  for (auto _ : state) {
    Fleet fleet = MakeFleet(static_cast<int>(state.range(0)));
    benchmark::DoNotOptimize(fleet.compiled);
  }
}

BENCHMARK(BM_DecideHit)->Arg(10)->Arg(1000)->Arg(100000);
BENCHMARK(BM_DecideMiss)->Arg(10)->Arg(1000)->Arg(100000);
BENCHMARK(BM_DecideMixed)->Arg(10)->Arg(1000)->Arg(100000);
BENCHMARK(BM_Compile)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond)->Iterations(2);

}  // namespace
}  // namespace shuttle::policy

BENCHMARK_MAIN();
