// The decoder and handler, driven through the fake interception source with fake process
// memory and fds: every family of interaction, and every kind of bad input a process can pass.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "agent/intercept/fakes.h"
#include "agent/intercept/intercept_handler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::intercept {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;

constexpr pid_t kPid = 4242;
constexpr int kFd = 7;
constexpr uint64_t kAddr = 0x10000;
constexpr uint64_t kAddr2 = 0x20000;
constexpr uint64_t kVec = 0x30000;

SyscallEvent Call(int nr, std::initializer_list<uint64_t> args) {
  SyscallEvent e;
  e.id = 1;
  e.pid = kPid;
  e.nr = nr;
  e.arch = AUDIT_ARCH_X86_64;
  int i = 0;
  for (uint64_t a : args) e.args[i++] = a;
  return e;
}

std::string UnixAddr(std::string_view path_bytes) {
  std::string s(offsetof(sockaddr_un, sun_path), '\0');
  sa_family_t family = AF_UNIX;
  std::memcpy(s.data(), &family, sizeof(family));
  s.append(path_bytes);
  return s;
}

std::string Inet4(const char* ip, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  inet_pton(AF_INET, ip, &sin.sin_addr);
  return std::string(reinterpret_cast<const char*>(&sin), sizeof(sin));
}

std::string Inet6(const char* ip, uint16_t port) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &sin6.sin6_addr);
  return std::string(reinterpret_cast<const char*>(&sin6), sizeof(sin6));
}

class InterceptDecoderTest : public ::testing::Test {
 protected:
  InterceptDecoderTest() : handler_(memory_, fds_, vms_, decider_) { vms_.Set(kPid, "web"); }

  // Delivers one notification through the fake source; returns how it was handled.
  FakeInterceptionSource::Handled Deliver(const SyscallEvent& e, bool still_valid = true,
                                          std::string channel = "web") {
    source_.Inject(e, std::move(channel), still_valid);
    auto handled = source_.Drain(handler_);
    EXPECT_EQ(handled.size(), 1u);
    return handled.empty() ? FakeInterceptionSource::Handled{} : handled[0];
  }

  // Delivers a connect() to the address `bytes` (placed at kAddr).
  FakeInterceptionSource::Handled Connect(const std::string& bytes) {
    memory_.Map(kPid, kAddr, bytes);
    return Deliver(Call(SYS_connect, {kFd, kAddr, bytes.size()}));
  }

  static void ExpectContinue(const FakeInterceptionSource::Handled& h) {
    EXPECT_EQ(h.response.kind, Response::Kind::kContinue);
  }
  static void ExpectFail(const FakeInterceptionSource::Handled& h, int error) {
    EXPECT_EQ(h.response.kind, Response::Kind::kFail);
    EXPECT_EQ(h.response.error, error);
  }

  RecordingDecider::Seen OnlySeen() {
    auto seen = decider_.seen();
    EXPECT_EQ(seen.size(), 1u);
    return seen.empty() ? RecordingDecider::Seen{} : seen.back();
  }

  FakeProcessMemory memory_;
  FakeProcessFds fds_;
  FakeVmResolver vms_;
  RecordingDecider decider_;
  InterceptHandler handler_;
  FakeInterceptionSource source_;
};

// --- AF_UNIX -----------------------------------------------------------------------------

TEST_F(InterceptDecoderTest, UnixPathSocket) {
  std::string path = "/run/postgresql/.s.PGSQL.5432";
  auto h = Connect(UnixAddr(path + '\0'));
  ExpectContinue(h);
  EXPECT_GE(h.validity_checks, 1);  // Memory was read: ID_VALID before deciding.
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UNIX_CONNECT);
  EXPECT_EQ(s.name, path);
  EXPECT_EQ(s.subject_vm, "web");
  EXPECT_EQ(s.pid, kPid);
  EXPECT_EQ(s.object.family, AF_UNIX);
  EXPECT_FALSE(s.object.abstract);
  EXPECT_FALSE(s.object.relative);
  EXPECT_EQ(fds_.socket_lookups(), 0);  // The socket type does not matter for AF_UNIX.
}

TEST_F(InterceptDecoderTest, UnixPathWithoutNulUsesAddrlen) {
  auto h = Connect(UnixAddr("/tmp/s"));  // addrlen stops right after the path.
  ExpectContinue(h);
  EXPECT_EQ(OnlySeen().name, "/tmp/s");
}

TEST_F(InterceptDecoderTest, RelativeUnixPathIsFlagged) {
  Connect(UnixAddr(std::string("sock\0", 5)));
  auto s = OnlySeen();
  EXPECT_EQ(s.name, "sock");
  EXPECT_TRUE(s.object.relative);
}

TEST_F(InterceptDecoderTest, AbstractSocketRenderedWithAt) {
  Connect(UnixAddr(std::string("\0dbus-abc", 9)));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UNIX_CONNECT);
  EXPECT_EQ(s.name, "@dbus-abc");
  EXPECT_TRUE(s.object.abstract);
}

TEST_F(InterceptDecoderTest, AbstractSocketEmbeddedNulsShownAsAt) {
  Connect(UnixAddr(std::string("\0a\0b", 4)));
  EXPECT_EQ(OnlySeen().name, "@a@b");
  // The broker connects to the raw bytes, NULs included.
  EXPECT_EQ(OnlySeen().object.abstract_name(), std::string("a\0b", 3));
}

TEST_F(InterceptDecoderTest, UnnamedUnixAddressLeftToTheKernel) {
  ExpectContinue(Connect(UnixAddr("")));
  ExpectContinue(Connect(UnixAddr(std::string("\0", 1))));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, LongestUnixPathFits) {
  std::string path = "/" + std::string(sizeof(sockaddr_un::sun_path) - 1, 'p');
  Connect(UnixAddr(path));
  EXPECT_EQ(OnlySeen().name, path);
}

// --- IP ----------------------------------------------------------------------------------

TEST_F(InterceptDecoderTest, TcpLoopbackV4) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  ExpectContinue(Connect(Inet4("127.0.0.1", 5432)));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::TCP_CONNECT);
  EXPECT_EQ(s.name, "127.0.0.1:5432");
  EXPECT_TRUE(s.object.loopback);
  EXPECT_EQ(s.object.port, 5432);
  EXPECT_EQ(s.object.socket_type, SOCK_STREAM);
}

TEST_F(InterceptDecoderTest, UdpConnectIsUdpSend) {
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  Connect(Inet4("127.0.0.53", 53));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UDP_SEND);
  EXPECT_EQ(s.name, "127.0.0.53:53");
}

TEST_F(InterceptDecoderTest, AnyAddressConnectsLocally) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  Connect(Inet4("0.0.0.0", 80));
  auto s = OnlySeen();
  EXPECT_TRUE(s.object.loopback);
  EXPECT_EQ(s.name, "0.0.0.0:80");
}

TEST_F(InterceptDecoderTest, NonLoopbackIsNotAnInteraction) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  ExpectContinue(Connect(Inet4("10.1.2.3", 443)));
  ExpectContinue(Connect(Inet6("2001:db8::1", 443)));
  EXPECT_EQ(decider_.count(), 0u);
  EXPECT_EQ(fds_.socket_lookups(), 0);  // No fd lookup paid for it.
  EXPECT_EQ(handler_.stats().not_interaction.load(), 2u);
}

TEST_F(InterceptDecoderTest, TcpLoopbackV6) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  Connect(Inet6("::1", 8080));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::TCP_CONNECT);
  EXPECT_EQ(s.name, "[::1]:8080");
  EXPECT_EQ(s.object.family, AF_INET6);
}

TEST_F(InterceptDecoderTest, V4MappedLoopbackNamedTheV4Way) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  Connect(Inet6("::ffff:127.0.0.1", 5432));
  EXPECT_EQ(OnlySeen().name, "127.0.0.1:5432");
}

TEST_F(InterceptDecoderTest, ShortIpAddressesLeftToTheKernel) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  ExpectContinue(Connect(Inet4("127.0.0.1", 1).substr(0, 8)));
  ExpectContinue(Connect(Inet6("::1", 1).substr(0, 20)));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, OtherFamiliesAreNotInteractions) {
  std::string netlink(12, '\0');
  sa_family_t f = AF_NETLINK;
  std::memcpy(netlink.data(), &f, sizeof(f));
  ExpectContinue(Connect(netlink));
  std::string unspec(16, '\0');  // AF_UNSPEC: UDP disconnect.
  ExpectContinue(Connect(unspec));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, BadFdOrNotASocket) {
  ExpectFail(Connect(Inet4("127.0.0.1", 1)), EBADF);
  fds_.SetSocket(kPid, kFd, -ENOTSOCK);
  ExpectFail(Connect(Inet4("127.0.0.1", 1)), ENOTSOCK);
  EXPECT_EQ(decider_.count(), 0u);
}

// --- Garbage from the caller ---------------------------------------------------------------

TEST_F(InterceptDecoderTest, GarbagePointerIsEfault) {
  auto h = Deliver(Call(SYS_connect, {kFd, 0xdead0000, 16}));
  ExpectFail(h, EFAULT);
  h = Deliver(Call(SYS_connect, {kFd, 0, 16}));  // NULL.
  ExpectFail(h, EFAULT);
  EXPECT_EQ(decider_.count(), 0u);
  EXPECT_EQ(handler_.stats().malformed.load(), 2u);
}

TEST_F(InterceptDecoderTest, AddressRunningIntoUnmappedMemoryIsEfault) {
  memory_.Map(kPid, kAddr, UnixAddr("/tm"));  // 5 bytes mapped, 16 claimed.
  ExpectFail(Deliver(Call(SYS_connect, {kFd, kAddr, 16})), EFAULT);
}

TEST_F(InterceptDecoderTest, OversizedOrNegativeLengthIsEinval) {
  memory_.Map(kPid, kAddr, std::string(4096, 'x'));
  ExpectFail(Deliver(Call(SYS_connect, {kFd, kAddr, 129})), EINVAL);
  ExpectFail(Deliver(Call(SYS_connect, {kFd, kAddr, 0xffffffff})), EINVAL);  // -1.
  ExpectFail(Deliver(Call(SYS_connect, {kFd, kAddr, 0x80000000})), EINVAL);
  ExpectContinue(Deliver(Call(SYS_connect, {kFd, kAddr, 1})));  // Kernel: EINVAL itself.
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, CallerGoneWhileReading) {
  memory_.FailReads(kPid, -ESRCH);
  auto h = Deliver(Call(SYS_connect, {kFd, kAddr, 16}));
  EXPECT_EQ(h.response.kind, Response::Kind::kDrop);
  EXPECT_EQ(handler_.stats().gone.load(), 1u);
}

TEST_F(InterceptDecoderTest, NotificationInvalidAfterReadIsNotTrusted) {
  // The pid may have been reused by another process: what we read is not the caller's.
  auto h = Connect(UnixAddr("/run/x"));
  ExpectContinue(h);
  source_.Inject(Call(SYS_connect, {kFd, kAddr, 8}), "web", /*still_valid=*/false);
  auto handled = source_.Drain(handler_);
  ASSERT_EQ(handled.size(), 1u);
  EXPECT_EQ(handled[0].response.kind, Response::Kind::kDrop);
  EXPECT_EQ(decider_.count(), 1u);  // Only the first, valid one reached the decider.
  // An EFAULT answer is not given for memory that may not be the caller's either.
  source_.Inject(Call(SYS_connect, {kFd, 0xbad, 16}), "web", /*still_valid=*/false);
  handled = source_.Drain(handler_);
  ASSERT_EQ(handled.size(), 1u);
  EXPECT_EQ(handled[0].response.kind, Response::Kind::kDrop);
}

TEST_F(InterceptDecoderTest, AgentCannotLookFailsWithEperm) {
  memory_.FailReads(kPid, -EPERM);
  ExpectFail(Deliver(Call(SYS_connect, {kFd, kAddr, 16})), EPERM);
  EXPECT_EQ(handler_.stats().inspect_errors.load(), 1u);
}

TEST_F(InterceptDecoderTest, ForeignArchIsRefused) {
  SyscallEvent e = Call(SYS_connect, {kFd, kAddr, 16});
  e.arch = AUDIT_ARCH_I386;
  ExpectFail(Deliver(e), EPERM);
}

// --- sendto / sendmsg / sendmmsg -----------------------------------------------------------

TEST_F(InterceptDecoderTest, SendtoWithoutAddressReadsNothing) {
  ExpectContinue(Deliver(Call(SYS_sendto, {kFd, kAddr2, 10, 0, 0, 0})));
  EXPECT_EQ(memory_.reads(), 0);
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, SendtoUdpLoopback) {
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  std::string addr = Inet4("127.0.0.1", 514);
  memory_.Map(kPid, kAddr, addr);
  ExpectContinue(Deliver(Call(SYS_sendto, {kFd, kAddr2, 10, 0, kAddr, addr.size()})));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UDP_SEND);
  EXPECT_EQ(s.name, "127.0.0.1:514");
}

TEST_F(InterceptDecoderTest, SendtoOnStreamSocketOnlyMattersWithFastOpen) {
  fds_.SetSocket(kPid, kFd, SOCK_STREAM);
  std::string addr = Inet4("127.0.0.1", 80);
  memory_.Map(kPid, kAddr, addr);
  ExpectContinue(Deliver(Call(SYS_sendto, {kFd, kAddr2, 10, 0, kAddr, addr.size()})));
  EXPECT_EQ(decider_.count(), 0u);
  Deliver(Call(SYS_sendto, {kFd, kAddr2, 10, MSG_FASTOPEN, kAddr, addr.size()}));
  EXPECT_EQ(OnlySeen().kind, v1::TCP_CONNECT);
}

TEST_F(InterceptDecoderTest, SendtoUnixDatagram) {
  std::string addr = UnixAddr(std::string("/dev/log\0", 9));
  memory_.Map(kPid, kAddr, addr);
  Deliver(Call(SYS_sendto, {kFd, kAddr2, 10, 0, kAddr, addr.size()}));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UNIX_CONNECT);
  EXPECT_EQ(s.name, "/dev/log");
}

msghdr Msg(uint64_t name, int namelen) {
  msghdr mh{};
  mh.msg_name = reinterpret_cast<void*>(name);  // NOLINT(performance-no-int-to-ptr): fake address.
  mh.msg_namelen = static_cast<socklen_t>(namelen);
  return mh;
}

TEST_F(InterceptDecoderTest, SendmsgWithoutName) {
  memory_.MapStruct(kPid, kAddr2, Msg(0, 0));
  ExpectContinue(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})));
  memory_.MapStruct(kPid, kAddr2, Msg(kAddr, 0));  // A pointer but no length: no name.
  ExpectContinue(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, SendmsgWithName) {
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  std::string addr = Inet6("::1", 53);
  memory_.Map(kPid, kAddr, addr);
  memory_.MapStruct(kPid, kAddr2, Msg(kAddr, static_cast<int>(addr.size())));
  Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0}));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::UDP_SEND);
  EXPECT_EQ(s.name, "[::1]:53");
}

TEST_F(InterceptDecoderTest, SendmsgBadInput) {
  ExpectFail(Deliver(Call(SYS_sendmsg, {kFd, 0xbad000, 0})), EFAULT);  // msghdr unreadable.
  memory_.Map(kPid, kAddr2, std::string(10, '\0'));                    // msghdr cut short.
  ExpectFail(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})), EFAULT);
  memory_.MapStruct(kPid, kAddr2, Msg(kAddr, -5));
  ExpectFail(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})), EINVAL);
  memory_.MapStruct(kPid, kAddr2, Msg(0xbad000, 16));  // Name pointer is garbage.
  ExpectFail(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})), EFAULT);
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, SendmsgOversizedNameLengthIsClampedLikeTheKernel) {
  std::string addr = UnixAddr("/run/a");
  addr.resize(128, '\0');
  memory_.Map(kPid, kAddr, addr);
  memory_.MapStruct(kPid, kAddr2, Msg(kAddr, 100000));
  ExpectContinue(Deliver(Call(SYS_sendmsg, {kFd, kAddr2, 0})));
  EXPECT_EQ(OnlySeen().name, "/run/a");
}

TEST_F(InterceptDecoderTest, SendmmsgDecidesEachDistinctDestination) {
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  std::string a = Inet4("127.0.0.1", 1000), b = Inet4("127.0.0.1", 2000);
  memory_.Map(kPid, kAddr, a);
  memory_.Map(kPid, kAddr + 0x100, b);
  mmsghdr vec[4] = {};
  vec[0].msg_hdr = Msg(kAddr, 16);
  vec[1].msg_hdr = Msg(kAddr, 16);  // Same again: not asked twice.
  vec[2].msg_hdr = Msg(0, 0);       // No name.
  vec[3].msg_hdr = Msg(kAddr + 0x100, 16);
  memory_.MapStruct(kPid, kVec, vec);
  ExpectContinue(Deliver(Call(SYS_sendmmsg, {kFd, kVec, 4, 0})));
  auto seen = decider_.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].name, "127.0.0.1:1000");
  EXPECT_EQ(seen[1].name, "127.0.0.1:2000");

  decider_.Deny("127.0.0.1:2000", ECONNREFUSED);
  ExpectFail(Deliver(Call(SYS_sendmmsg, {kFd, kVec, 4, 0})), ECONNREFUSED);
}

TEST_F(InterceptDecoderTest, SendmmsgBadVectors) {
  ExpectFail(Deliver(Call(SYS_sendmmsg, {kFd, 0xbad000, 2, 0})), EFAULT);  // First entry.
  ExpectContinue(Deliver(Call(SYS_sendmmsg, {kFd, kVec, 0, 0})));          // Empty.
  // Entry 1 unreadable: the kernel sends entry 0 and stops; so do we (no EFAULT).
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  memory_.Map(kPid, kAddr, Inet4("127.0.0.1", 7));
  mmsghdr one{};
  one.msg_hdr = Msg(kAddr, 16);
  memory_.MapStruct(kPid, kVec, one);
  ExpectContinue(Deliver(Call(SYS_sendmmsg, {kFd, kVec, 1000000, 0})));
  EXPECT_EQ(OnlySeen().name, "127.0.0.1:7");
}

// --- POSIX and SysV IPC --------------------------------------------------------------------

TEST_F(InterceptDecoderTest, MqOpen) {
  memory_.Map(kPid, kAddr, std::string("jobs\0", 5));
  ExpectContinue(Deliver(Call(SYS_mq_open, {kAddr, O_RDWR | O_CREAT, 0600, 0})));
  auto s = OnlySeen();
  EXPECT_EQ(s.kind, v1::MQ_OPEN);
  EXPECT_EQ(s.name, "/jobs");  // glibc strips the '/', the policy names it with one.
  EXPECT_TRUE(s.object.create);
}

TEST_F(InterceptDecoderTest, MqOpenBadNames) {
  memory_.Map(kPid, kAddr, std::string(300, 'q'));  // No NUL within NAME_MAX + 1.
  ExpectFail(Deliver(Call(SYS_mq_open, {kAddr, O_RDONLY, 0, 0})), ENAMETOOLONG);
  memory_.Map(kPid, kAddr, std::string(20, 'q'));  // Unterminated, then unmapped.
  ExpectFail(Deliver(Call(SYS_mq_open, {kAddr, O_RDONLY, 0, 0})), EFAULT);
  ExpectFail(Deliver(Call(SYS_mq_open, {0xbad000, O_RDONLY, 0, 0})), EFAULT);
  memory_.Map(kPid, kAddr, std::string("a/b\0", 4));  // The kernel refuses it (EACCES).
  ExpectContinue(Deliver(Call(SYS_mq_open, {kAddr, O_RDONLY, 0, 0})));
  memory_.Map(kPid, kAddr, std::string("\0", 1));
  ExpectContinue(Deliver(Call(SYS_mq_open, {kAddr, O_RDONLY, 0, 0})));
  EXPECT_EQ(decider_.count(), 0u);
  // The longest valid name, NAME_MAX bytes, ends exactly at the buffer's end.
  memory_.Map(kPid, kAddr, std::string(255, 'n') + '\0');
  Deliver(Call(SYS_mq_open, {kAddr, O_RDONLY, 0, 0}));
  EXPECT_EQ(OnlySeen().name, "/" + std::string(255, 'n'));
}

TEST_F(InterceptDecoderTest, SysvKeys) {
  ExpectContinue(Deliver(Call(SYS_shmget, {IPC_PRIVATE, 4096, IPC_CREAT | 0600})));
  EXPECT_EQ(decider_.count(), 0u);  // IPC_PRIVATE: intra, no decision.
  Deliver(Call(SYS_shmget, {0x1234, 4096, IPC_CREAT | 0600}));
  Deliver(Call(SYS_msgget, {0xfeedbeef, 0}));
  Deliver(Call(SYS_semget, {0x42, 1, IPC_CREAT}));
  EXPECT_EQ(memory_.reads(), 0);
  auto seen = decider_.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].kind, v1::SHM_OPEN);
  EXPECT_EQ(seen[0].name, "key:0x00001234");
  EXPECT_TRUE(seen[0].object.create);
  EXPECT_EQ(seen[1].kind, v1::MQ_OPEN);
  EXPECT_EQ(seen[1].name, "key:0xfeedbeef");
  EXPECT_FALSE(seen[1].object.create);
  EXPECT_EQ(seen[2].kind, v1::SYNC_OPEN);
  EXPECT_EQ(seen[2].name, "key:0x00000042");
}

// --- Signals -------------------------------------------------------------------------------

TEST_F(InterceptDecoderTest, SignalTargets) {
  Deliver(Call(SYS_kill, {42, 0}));
  Deliver(Call(SYS_kill, {0, SIGTERM}));
  Deliver(Call(SYS_kill, {static_cast<uint64_t>(-1), SIGKILL}));
  Deliver(Call(SYS_kill, {static_cast<uint64_t>(-7), SIGHUP}));
  Deliver(Call(SYS_tgkill, {42, 43, SIGUSR1}));
  Deliver(Call(SYS_tkill, {44, SIGUSR2}));
  Deliver(Call(SYS_rt_tgsigqueueinfo, {50, 51, 40, 0}));
  auto seen = decider_.seen();
  ASSERT_EQ(seen.size(), 7u);
  for (const auto& s : seen) EXPECT_EQ(s.kind, v1::SIGNAL);
  EXPECT_EQ(seen[0].name, "pid:42");
  EXPECT_EQ(seen[0].object.signal, 0);  // Existence probe.
  EXPECT_EQ(seen[1].name, "pgrp:self");
  EXPECT_EQ(seen[2].name, "all");
  EXPECT_EQ(seen[3].name, "pgrp:7");
  EXPECT_EQ(seen[4].name, "pid:42");
  EXPECT_EQ(seen[4].object.target_tid, 43);
  EXPECT_EQ(seen[4].object.signal, SIGUSR1);
  EXPECT_EQ(seen[5].object.target_tid, 44);
  EXPECT_EQ(seen[6].object.target_pid, 50);
  EXPECT_EQ(memory_.reads(), 0);
}

TEST_F(InterceptDecoderTest, InvalidSignalLeftToTheKernel) {
  ExpectContinue(Deliver(Call(SYS_kill, {42, 99})));
  ExpectContinue(Deliver(Call(SYS_kill, {42, static_cast<uint64_t>(-1)})));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, PidfdSendSignal) {
  fds_.SetPidfd(kPid, 9, 17);
  fds_.SetPidfd(kPid, 10, -1);
  Deliver(Call(SYS_pidfd_send_signal, {9, SIGTERM, 0, 0}));
  EXPECT_EQ(OnlySeen().name, "pid:17");
  ExpectFail(Deliver(Call(SYS_pidfd_send_signal, {10, SIGTERM, 0, 0})), ESRCH);
  ExpectFail(Deliver(Call(SYS_pidfd_send_signal, {11, SIGTERM, 0, 0})), EBADF);
}

// --- Decisions, VMs, counters --------------------------------------------------------------

TEST_F(InterceptDecoderTest, DenyGivesTheChosenErrno) {
  decider_.Deny("/run/db.sock", EACCES);
  ExpectFail(Connect(UnixAddr("/run/db.sock")), EACCES);
  ExpectContinue(Connect(UnixAddr("/run/other.sock")));
  EXPECT_EQ(handler_.stats().denied.load(), 1u);
  EXPECT_EQ(handler_.stats().allowed.load(), 1u);
}

TEST_F(InterceptDecoderTest, VmComesFromTheKernelNotTheChannel) {
  vms_.Set(kPid, "db");
  Deliver(Call(SYS_kill, {1, 0}), true, /*channel=*/"web");
  auto s = OnlySeen();
  EXPECT_EQ(s.subject_vm, "db");
  EXPECT_EQ(s.channel_vm, "web");
  EXPECT_EQ(handler_.stats().vm_mismatch.load(), 1u);
}

TEST_F(InterceptDecoderTest, VmIsNotResolvedWhenNoRuleCouldUseIt) {
  vms_.Set(kPid, "db");
  decider_.SubjectIrrelevant(v1::UNIX_CONNECT);
  ExpectContinue(Connect(UnixAddr("/run/app.sock")));
  EXPECT_EQ(vms_.lookups(), 0);
  EXPECT_EQ(OnlySeen().subject_vm, OnlySeen().channel_vm);
  EXPECT_EQ(handler_.stats().vm_from_channel.load(), 1u);
  EXPECT_EQ(handler_.stats().vm_mismatch.load(), 0u);
  // Another kind still asks the kernel.
  Deliver(Call(SYS_kill, {1, 0}), true, /*channel=*/"web");
  EXPECT_EQ(vms_.lookups(), 1);
  EXPECT_EQ(decider_.seen().back().subject_vm, "db");
}

TEST_F(InterceptDecoderTest, UnknownVmIsReportedEmpty) {
  SyscallEvent e = Call(SYS_kill, {1, 0});
  e.pid = 999;
  Deliver(e);
  EXPECT_EQ(OnlySeen().subject_vm, "");
  EXPECT_EQ(handler_.stats().vm_unknown.load(), 1u);
}

TEST_F(InterceptDecoderTest, UnknownSyscallContinues) {
  ExpectContinue(Deliver(Call(SYS_getpid, {})));
  EXPECT_EQ(decider_.count(), 0u);
}

TEST_F(InterceptDecoderTest, RunServesInjectedEventsUntilStopped) {
  std::thread loop([this] { EXPECT_TRUE(source_.Run(handler_).ok()); });
  for (int i = 1; i <= 5; ++i) source_.Inject(Call(SYS_kill, {static_cast<uint64_t>(i), 0}), "web");
  EXPECT_TRUE(source_.WaitForHandled(5, absl::Seconds(30)));
  source_.Stop();
  loop.join();
  EXPECT_EQ(source_.handled().size(), 5u);
  EXPECT_EQ(decider_.count(), 5u);
  EXPECT_EQ(handler_.stats().notifications.load(), 5u);
}

TEST_F(InterceptDecoderTest, RandomGarbageNeverCrashes) {
  std::mt19937_64 rng(42);
  fds_.SetSocket(kPid, kFd, SOCK_DGRAM);
  const int kNrs[] = {SYS_connect, SYS_sendto, SYS_sendmsg, SYS_sendmmsg,         SYS_mq_open,
                      SYS_shmget,  SYS_kill,   SYS_tgkill,  SYS_pidfd_send_signal};
  for (int i = 0; i < 3000; ++i) {
    // Random bytes at a few addresses; arguments pointing near them or anywhere.
    std::string junk(rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    memory_.Map(kPid, kAddr, junk);
    SyscallEvent e = Call(kNrs[rng() % std::size(kNrs)], {});
    for (uint64_t& a : e.args) {
      switch (rng() % 4) {
        case 0:
          a = kAddr + rng() % 300;
          break;
        case 1:
          a = rng();
          break;
        case 2:
          a = rng() % 200;
          break;
        default:
          a = kFd;
          break;
      }
    }
    source_.Inject(e, "web", rng() % 8 != 0);
    auto handled = source_.Drain(handler_);
    ASSERT_EQ(handled.size(), 1u);
    const Response& r = handled[0].response;
    if (r.kind == Response::Kind::kFail) {
      ASSERT_GT(r.error, 0);
      ASSERT_LT(r.error, 4096);
    }
  }
  EXPECT_EQ(handler_.stats().notifications.load(), 3000u);
  for (const auto& s : decider_.seen()) EXPECT_LE(s.name.size(), kMaxObjectName);
}

}  // namespace
}  // namespace shuttle::agent::intercept
