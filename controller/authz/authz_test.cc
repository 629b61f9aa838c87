#include "controller/authz/authz.h"

#include "gtest/gtest.h"

namespace shuttle::controller {
namespace {

TEST(RoleAllows, Table) {
  struct Case {
    const char* role;
    Permission permission;
    bool allowed;
  } cases[] = {
      {"admin", Permission::kRead, true},    {"admin", Permission::kWrite, true},
      {"admin", Permission::kAgent, false},  {"viewer", Permission::kRead, true},
      {"viewer", Permission::kWrite, false}, {"viewer", Permission::kAgent, false},
      {"agent", Permission::kAgent, true},   {"agent", Permission::kRead, false},
      {"agent", Permission::kWrite, false},  {"", Permission::kRead, false},
      {"", Permission::kEnroll, true},       {"Admin", Permission::kWrite, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(RoleAllows(c.role, c.permission), c.allowed)
        << "role '" << c.role << "' permission " << static_cast<int>(c.permission);
  }
}

}  // namespace
}  // namespace shuttle::controller
