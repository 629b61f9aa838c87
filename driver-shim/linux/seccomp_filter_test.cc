// Runs the launcher's filter program through a small classic-BPF interpreter (the subset the
// filter uses, which is also what the kernel's seccomp action cache can evaluate) and checks
// the action for every syscall number, both arches, x32, and sendto with and without an
// address.
#include "driver-shim/linux/seccomp_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <sys/syscall.h>

#include <cstddef>
#include <cstring>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace {

std::vector<sock_filter> Program() {
  std::vector<sock_filter> insns(SHUTTLE_FILTER_MAX_INSNS);
  int n = shuttle_build_filter(insns.data(), insns.size());
  EXPECT_GT(n, 0);
  insns.resize(n > 0 ? n : 0);
  return insns;
}

// Returns the filter's action, or 0xdeadbeef if the program misbehaves (unsupported opcode,
// jump out of range, read out of bounds, falls off the end).
uint32_t Eval(const std::vector<sock_filter>& prog, const seccomp_data& data) {
  uint32_t acc = 0;
  size_t pc = 0;
  unsigned char bytes[sizeof(seccomp_data)];
  std::memcpy(bytes, &data, sizeof(data));
  for (int steps = 0; steps < 1000 && pc < prog.size(); ++steps) {
    const sock_filter& in = prog[pc];
    switch (in.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (in.k % 4 != 0 || in.k + 4 > sizeof(data)) return 0xdeadbeef;
        std::memcpy(&acc, bytes + in.k, 4);
        ++pc;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += 1 + (acc == in.k ? in.jt : in.jf);
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += 1 + (acc >= in.k ? in.jt : in.jf);
        break;
      case BPF_RET | BPF_K:
        return in.k;
      default:
        return 0xdeadbeef;
    }
  }
  return 0xdeadbeef;
}

seccomp_data Call(int nr, uint32_t arch = AUDIT_ARCH_X86_64) {
  seccomp_data d{};
  d.nr = nr;
  d.arch = arch;
  return d;
}

constexpr uint32_t kEperm = SECCOMP_RET_ERRNO | EPERM;

TEST(SeccompFilterTest, FitsAndEndsInReturns) {
  std::vector<sock_filter> prog = Program();
  ASSERT_FALSE(prog.empty());
  EXPECT_LE(prog.size(), size_t{SHUTTLE_FILTER_MAX_INSNS});
  // Every jump lands inside the program.
  for (size_t i = 0; i < prog.size(); ++i) {
    if (BPF_CLASS(prog[i].code) == BPF_JMP) {
      EXPECT_LT(i + 1 + prog[i].jt, prog.size()) << i;
      EXPECT_LT(i + 1 + prog[i].jf, prog.size()) << i;
    }
  }
  sock_filter small[4];
  EXPECT_EQ(shuttle_build_filter(small, 4), -1);
}

TEST(SeccompFilterTest, NotifiesExactlyTheInteractionSyscalls) {
  std::vector<sock_filter> prog = Program();
  const std::set<int> notified = {SYS_connect,
                                  SYS_sendmsg,
                                  SYS_sendmmsg,
                                  SYS_mq_open,
                                  SYS_shmget,
                                  SYS_msgget,
                                  SYS_semget,
                                  SYS_kill,
                                  SYS_tkill,
                                  SYS_tgkill,
                                  SYS_rt_sigqueueinfo,
                                  SYS_rt_tgsigqueueinfo,
                                  SYS_pidfd_send_signal};
  size_t count = 0;
  const int* list = shuttle_notified_syscalls(&count);
  EXPECT_EQ(std::set<int>(list, list + count), notified);
  for (int nr = 0; nr < 1024; ++nr) {
    uint32_t want = notified.count(nr) ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ALLOW;
    EXPECT_EQ(Eval(prog, Call(nr)), want) << "syscall " << nr;
  }
  // The data path and the file calls stay native.
  for (int nr : {SYS_read, SYS_write, SYS_open, SYS_openat, SYS_openat2, SYS_execve, SYS_execveat,
                 SYS_recvmsg, SYS_bind, SYS_listen, SYS_accept4}) {
    EXPECT_EQ(Eval(prog, Call(nr)), SECCOMP_RET_ALLOW) << nr;
  }
}

TEST(SeccompFilterTest, SendtoOnlyWithAnAddress) {
  std::vector<sock_filter> prog = Program();
  seccomp_data d = Call(SYS_sendto);
  EXPECT_EQ(Eval(prog, d), SECCOMP_RET_ALLOW);
  d.args[4] = 0x7ffc12345678ull;
  EXPECT_EQ(Eval(prog, d), SECCOMP_RET_USER_NOTIF);
  d.args[4] = 0x100000000ull;  // Only the high half set.
  EXPECT_EQ(Eval(prog, d), SECCOMP_RET_USER_NOTIF);
  d.args[4] = 0x1;  // Only the low half set.
  EXPECT_EQ(Eval(prog, d), SECCOMP_RET_USER_NOTIF);
  d.args[4] = 0;
  d.args[5] = 16;  // A length alone does not make an address.
  EXPECT_EQ(Eval(prog, d), SECCOMP_RET_ALLOW);
}

TEST(SeccompFilterTest, ForeignAbisAreDenied) {
  std::vector<sock_filter> prog = Program();
  // i386 via int 0x80: its numbers mean other syscalls (102 is socketcall there).
  for (int nr : {0, 3, 4, 37, 102, 277, 363}) {
    EXPECT_EQ(Eval(prog, Call(nr, AUDIT_ARCH_I386)), kEperm) << nr;
  }
  // x32 shares the x86_64 arch value but sets bit 30.
  EXPECT_EQ(Eval(prog, Call(0x40000000 | SYS_connect)), kEperm);
  EXPECT_EQ(Eval(prog, Call(0x40000000 | SYS_read)), kEperm);
  EXPECT_EQ(Eval(prog, Call(-1)), kEperm);  // 0xffffffff: not a syscall either.
}

}  // namespace
