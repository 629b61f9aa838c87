// Test helper (header-only, tests only): compiles one YAML policy, for tests of code that
// consumes a CompiledPolicy (the agent's sharing, invocation, ...).
#ifndef SHUTTLE_POLICY_POLICY_TESTING_H_
#define SHUTTLE_POLICY_POLICY_TESTING_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "policy/matcher.h"
#include "policy/parser.h"

namespace shuttle::policy::testing {

// The compiled policy of `yaml` (one policy, every host); a parse or compile error fails the
// calling test (and returns null).
inline std::shared_ptr<const policy::CompiledPolicy> CompileYaml(const std::string& yaml) {
  absl::StatusOr<v1::Policy> parsed = policy::ParsePolicyOrStatus(yaml, "test.yaml");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return nullptr;
  v1::PolicyBundle bundle;
  bundle.set_version(1);
  *bundle.add_policies() = *parsed;
  absl::StatusOr<std::shared_ptr<const policy::CompiledPolicy>> compiled =
      policy::CompiledPolicy::Compile(bundle);
  EXPECT_TRUE(compiled.ok()) << compiled.status();
  return compiled.ok() ? *compiled : nullptr;
}

}  // namespace shuttle::policy::testing

#endif  // SHUTTLE_POLICY_POLICY_TESTING_H_
