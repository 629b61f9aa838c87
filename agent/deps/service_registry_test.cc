// Unit tests of service validation (service_spec.h) and of the registry's persistence
// (service_registry.h), in temporary directories.
#include "agent/deps/service_registry.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "agent/audit/audit_testing.h"
#include "agent/deps/service_spec.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::deps {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::SizeIs;

v1::LocalService Echo(const std::string& vm = "db", const std::string& name = "echo",
                      const std::string& ready = "unix:/run/echo.sock") {
  v1::LocalService service;
  service.set_vm(vm);
  service.set_name(name);
  service.add_argv("/usr/bin/echo-server");
  service.add_argv("--flag");
  service.set_ready(ready);
  return service;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

TEST(ReadyAddressTest, ParsesEachKindAndPrintsCanonically) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress unix_path, ReadyAddress::Parse("unix:/run/x.sock"));
  EXPECT_EQ(unix_path.kind, ReadyAddress::Kind::kUnixPath);
  EXPECT_EQ(unix_path.path, "/run/x.sock");
  EXPECT_EQ(unix_path.ToString(), "unix:/run/x.sock");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress abstract, ReadyAddress::Parse("abstract:dbus-1"));
  EXPECT_EQ(abstract.name, "dbus-1");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress tcp, ReadyAddress::Parse("tcp:127.0.0.2:5432"));
  EXPECT_EQ(tcp.ip, "127.0.0.2");
  EXPECT_EQ(tcp.port, 5432);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress tcp6, ReadyAddress::Parse("tcp:[0:0::1]:80"));
  EXPECT_EQ(tcp6.ToString(), "tcp:[::1]:80");
}

TEST(ReadyAddressTest, RejectsBadAddressesWithReasons) {
  EXPECT_THAT(ReadyAddress::Parse("/run/x.sock"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must start with unix:")));
  EXPECT_THAT(ReadyAddress::Parse("unix:run/x.sock"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not absolute")));
  EXPECT_THAT(ReadyAddress::Parse("unix:/run/../etc/x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not normalized")));
  EXPECT_THAT(ReadyAddress::Parse(absl::StrCat("unix:/", std::string(200, 'a'))),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("longer than")));
  EXPECT_THAT(ReadyAddress::Parse("abstract:"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty abstract")));
  EXPECT_THAT(ReadyAddress::Parse("tcp:10.0.0.1:80"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not loopback")));
  EXPECT_THAT(ReadyAddress::Parse("tcp:127.0.0.1:0"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a port")));
  EXPECT_THAT(ReadyAddress::Parse("tcp:127.0.0.1:+80"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a port")));
  EXPECT_THAT(ReadyAddress::Parse("tcp:localhost:80"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an IP address")));
  EXPECT_THAT(ReadyAddress::Parse("tcp:[::1]80"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("[IPv6]:PORT")));
}

TEST(ReadyAddressTest, ServesMatchingConnectsOnly) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress unix_path, ReadyAddress::Parse("unix:/run/x.sock"));
  EXPECT_TRUE(unix_path.Serves(broker::UnixPathRequest{"/run/x.sock", SOCK_STREAM}));
  EXPECT_FALSE(unix_path.Serves(broker::UnixPathRequest{"/run/y.sock", SOCK_STREAM}));
  EXPECT_FALSE(unix_path.Serves(broker::UnixPathRequest{"/run/x.sock", SOCK_DGRAM}));
  EXPECT_FALSE(unix_path.Serves(broker::UnixAbstractRequest{"/run/x.sock", SOCK_STREAM}));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress abstract, ReadyAddress::Parse("abstract:app"));
  EXPECT_TRUE(abstract.Serves(broker::UnixAbstractRequest{"app", SOCK_STREAM}));
  EXPECT_FALSE(abstract.Serves(broker::UnixAbstractRequest{"app2", SOCK_STREAM}));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress tcp, ReadyAddress::Parse("tcp:127.0.0.1:5432"));
  auto inet = [](const char* ip, uint16_t port, int type = SOCK_STREAM) {
    return *broker::InetRequest::Make(ip, port, type);
  };
  EXPECT_TRUE(tcp.Serves(inet("127.0.0.1", 5432)));
  EXPECT_TRUE(tcp.Serves(inet("0.0.0.0", 5432)));           // Linux connects it to 127.0.0.1.
  EXPECT_TRUE(tcp.Serves(inet("::ffff:127.0.0.1", 5432)));  // v4-mapped.
  EXPECT_FALSE(tcp.Serves(inet("127.0.0.1", 5433)));
  EXPECT_FALSE(tcp.Serves(inet("127.0.0.2", 5432)));
  EXPECT_FALSE(tcp.Serves(inet("::1", 5432)));
  EXPECT_FALSE(tcp.Serves(inet("127.0.0.1", 5432, SOCK_DGRAM)));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(ReadyAddress tcp6, ReadyAddress::Parse("tcp:[::1]:80"));
  EXPECT_TRUE(tcp6.Serves(inet("::1", 80)));
  EXPECT_TRUE(tcp6.Serves(inet("::", 80)));
  EXPECT_FALSE(tcp6.Serves(inet("127.0.0.1", 80)));
}

TEST(NormalizeServiceTest, FillsDefaultsAndCanonicalReady) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::LocalService service,
                               NormalizeService(Echo("db", "pg@main", "tcp:[0::1]:5432")));
  EXPECT_EQ(service.ready(), "tcp:[::1]:5432");
  EXPECT_EQ(StartTimeoutOf(service), kDefaultStartTimeout);
  EXPECT_EQ(service.start_timeout().seconds(), 10);
}

TEST(NormalizeServiceTest, NamesTheBadField) {
  struct Case {
    std::function<void(v1::LocalService&)> mutate;
    std::string error;
  };
  const std::vector<Case> cases = {
      {[](auto& s) { s.set_vm("Bad"); }, "vm: vm name 'Bad'"},
      {[](auto& s) { s.set_vm("host"); }, "vm: vm name 'host' is reserved"},
      {[](auto& s) { s.set_name(""); }, "name: missing"},
      {[](auto& s) { s.set_name("a b"); }, "name: 'a b' may only contain"},
      {[](auto& s) { s.set_name("a/b"); }, "name: 'a/b' may only contain"},
      {[](auto& s) { s.set_name(std::string(129, 'a')); }, "name: longer than 128"},
      {[](auto& s) { s.clear_argv(); }, "argv: no command given"},
      {[](auto& s) { s.set_argv(0, ""); }, "argv: no command given"},
      {[](auto& s) { s.set_argv(1, std::string("a\0b", 3)); }, "argv: argument 1 contains a NUL"},
      {[](auto& s) { s.set_user("ro ot"); }, "user: 'ro ot' is not a user name"},
      {[](auto& s) { s.add_env("NOEQUALS"); }, "env: 'NOEQUALS' is not NAME=value"},
      {[](auto& s) { s.add_env("=x"); }, "env: '=x' is not NAME=value"},
      {[](auto& s) { s.add_env("1A=x"); }, "env: '1A=x' is not NAME=value"},
      {[](auto& s) { s.add_env("A-B=x"); }, "env: 'A-B=x' is not NAME=value"},
      {[](auto& s) { s.set_cwd("srv"); }, "cwd: 'srv' is not absolute"},
      {[](auto& s) { s.clear_ready(); }, "ready: missing"},
      {[](auto& s) { s.set_ready("udp:127.0.0.1:53"); }, "ready: 'udp:127.0.0.1:53' must start"},
      {[](auto& s) { s.mutable_start_timeout()->set_seconds(0); },
       "start_timeout: must be positive"},
      {[](auto& s) { s.mutable_start_timeout()->set_seconds(-3); },
       "start_timeout: must be positive"},
      {[](auto& s) { s.mutable_start_timeout()->set_seconds(3600); }, "start_timeout: at most 10m"},
  };
  for (const Case& c : cases) {
    v1::LocalService service = Echo();
    c.mutate(service);
    EXPECT_THAT(NormalizeService(service),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.error)))
        << c.error;
  }
  v1::LocalService fine = Echo();
  fine.set_user("postgres");
  fine.add_env("PGDATA=/var/lib/pg");
  fine.set_cwd("/srv");
  EXPECT_THAT(NormalizeService(fine), IsOk());
}

TEST(ServiceRegistryTest, AddListRemoveAndPersistAcrossOpens) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/services.json";
  {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(auto registry, ServiceRegistry::Open(path));
    EXPECT_THAT(registry->List(), SizeIs(0));
    struct stat st {};
    EXPECT_NE(::stat(path.c_str(), &st), 0) << "an empty registry writes nothing";
    SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::LocalService stored, registry->Add(Echo("web", "zeta")));
    EXPECT_EQ(stored.start_timeout().seconds(), 10);
    v1::LocalService pg = Echo("db", "postgresql", "tcp:127.0.0.1:5432");
    pg.set_user("postgres");
    pg.mutable_start_timeout()->set_seconds(30);
    ASSERT_THAT(registry->Add(pg), IsOk());
    ASSERT_THAT(registry->Add(Echo("db", "echo")), IsOk());
    EXPECT_THAT(ReadAll(path), HasSubstr("\"postgresql\""));
    ASSERT_EQ(::stat((path + ".tmp").c_str(), &st), -1) << "the temporary file is renamed";
  }
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto reopened, ServiceRegistry::Open(path));
  std::vector<v1::LocalService> listed = reopened->List();
  ASSERT_THAT(listed, SizeIs(3));
  EXPECT_EQ(ServiceLabel(listed[0]), "db/echo");  // Sorted by VM, then name.
  EXPECT_EQ(ServiceLabel(listed[1]), "db/postgresql");
  EXPECT_EQ(ServiceLabel(listed[2]), "web/zeta");
  EXPECT_EQ(listed[1].user(), "postgres");
  EXPECT_EQ(StartTimeoutOf(listed[1]), absl::Seconds(30));
  EXPECT_EQ(listed[0].argv(1), "--flag");

  ASSERT_THAT(reopened->Remove("db", "echo"), IsOk());
  EXPECT_THAT(reopened->Remove("db", "echo"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("vm db has no service named echo")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto again, ServiceRegistry::Open(path));
  EXPECT_THAT(again->List(), SizeIs(2));
}

TEST(ServiceRegistryTest, RefusesDuplicatesAndInvalidServicesWithoutChangingTheFile) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/services.json";
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto registry, ServiceRegistry::Open(path));
  ASSERT_THAT(registry->Add(Echo("db", "echo")), IsOk());
  const std::string before = ReadAll(path);
  EXPECT_THAT(registry->Add(Echo("db", "echo", "unix:/run/other.sock")),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("vm db already has a service named echo")));
  EXPECT_THAT(registry->Add(Echo("db", "echo2")),
              StatusIs(absl::StatusCode::kAlreadyExists,
                       HasSubstr("db/echo already is ready at unix:/run/echo.sock")));
  EXPECT_THAT(registry->Add(Echo("db", "bad name")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name:")));
  EXPECT_EQ(ReadAll(path), before);
  // Another VM may use the same name and address: its /run is its own.
  EXPECT_THAT(registry->Add(Echo("web", "echo")), IsOk());
}

TEST(ServiceRegistryTest, FindServingMatchesTheVmAndAddress) {
  testing::TempDir dir;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto registry, ServiceRegistry::Open(dir.path() + "/s.json"));
  ASSERT_THAT(registry->Add(Echo("db", "echo")), IsOk());
  ASSERT_THAT(registry->Add(Echo("db", "pg", "tcp:127.0.0.1:5432")), IsOk());
  ASSERT_THAT(registry->Add(Echo("dbx", "other", "tcp:127.0.0.1:5433")), IsOk());
  auto found =
      registry->FindServing("db", *broker::InetRequest::Make("127.0.0.1", 5432, SOCK_STREAM));
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name(), "pg");
  found = registry->FindServing("db", broker::UnixPathRequest{"/run/echo.sock", SOCK_STREAM});
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name(), "echo");
  EXPECT_FALSE(registry->FindServing("web", broker::UnixPathRequest{"/run/echo.sock", SOCK_STREAM})
                   .has_value());
  EXPECT_FALSE(
      registry->FindServing("db", *broker::InetRequest::Make("127.0.0.1", 5433, SOCK_STREAM))
          .has_value());
}

TEST(ServiceRegistryTest, RunStatesAreKeptApartFromTheFile) {
  testing::TempDir dir;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto registry, ServiceRegistry::Open(dir.path() + "/s.json"));
  EXPECT_EQ(registry->RunStateOf("db", "echo").phase, ServiceRunState::Phase::kStopped);
  registry->SetRunState("db", "echo", {ServiceRunState::Phase::kRunning, 42, 1, ""});
  EXPECT_EQ(registry->RunStateOf("db", "echo").pid, 42);
  EXPECT_STREQ(PhaseName(registry->RunStateOf("db", "echo").phase), "running");
}

TEST(ServiceRegistryTest, BadFilesFailToOpenNamingFileAndService) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/services.json";
  std::ofstream(path) << "not json";
  EXPECT_THAT(ServiceRegistry::Open(path), StatusIs(absl::StatusCode::kInvalidArgument,
                                                    HasSubstr(path + ": not a service list")));
  std::ofstream(path) << R"({"services": [{"vm": "db", "name": "x", "argv": ["/bin/x"],
                               "ready": "unix:/run/x"},
                              {"vm": "db", "name": "y", "argv": ["/bin/y"], "ready": "nope"}]})";
  EXPECT_THAT(ServiceRegistry::Open(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(path + ": service 2 (db/y): ready: 'nope' must start")));
  std::ofstream(path) << R"({"services": [{"vm": "db", "name": "x", "argv": ["/bin/x"],
                               "ready": "unix:/run/x"},
                              {"vm": "db", "name": "x", "argv": ["/bin/y"], "ready": "unix:/y"}]})";
  EXPECT_THAT(ServiceRegistry::Open(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("service db/x twice")));
}

TEST(ServiceRegistryTest, AFailedSaveChangesNothing) {
  testing::TempDir dir;
  // The registry's file lives in a directory that disappears: saving fails.
  const std::string sub = dir.path() + "/gone";
  ASSERT_EQ(::mkdir(sub.c_str(), 0700), 0);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto registry, ServiceRegistry::Open(sub + "/services.json"));
  ASSERT_EQ(::rmdir(sub.c_str()), 0);
  EXPECT_THAT(registry->Add(Echo()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("saving services to")));
  EXPECT_THAT(registry->List(), SizeIs(0));
}

}  // namespace
}  // namespace shuttle::agent::deps
