/* The launcher's seccomp filter (see seccomp_filter.h). Layout:
 *
 *   ld  arch;  jeq AUDIT_ARCH_X86_64 ? next : deny
 *   ld  nr;    jge X32_SYSCALL_BIT ? deny : next
 *   jeq sendto ? sendto_check : next
 *   jeq <each notified nr> ? notify : next
 *   ret ALLOW
 *   sendto_check: args[4] (dest_addr) == 0 (both halves) ? allow : notify
 *   notify: ret USER_NOTIF
 *   deny:   ret ERRNO(EPERM)
 *
 * Jump targets are computed from the labels below, so adding a syscall to kNotified is all it
 * takes to extend the filter.
 */
#include "driver-shim/linux/seccomp_filter.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#ifndef __X32_SYSCALL_BIT
#define __X32_SYSCALL_BIT 0x40000000
#endif

static const int kNotified[] = {
    SYS_connect,
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
    SYS_pidfd_send_signal,
    /* Invocation (issue 5) does not intercept execve/execveat: the agent binds a stand-in
     * (shuttle-invoke) over each program a rule places in another VM, so exec of that path
     * runs the stand-in, which asks the agent (agent/invoke/). Notifying every exec would cost
     * each exec a round trip and could not replace the image the kernel is loading anyway. */
};

#define kNotifiedCount (sizeof(kNotified) / sizeof(kNotified[0]))

const int* shuttle_notified_syscalls(size_t* count) {
  *count = kNotifiedCount;
  return kNotified;
}

/* seccomp_data offsets; x86_64 is little-endian, so the low half of args[i] comes first. */
#define kOffNr ((uint32_t)offsetof(struct seccomp_data, nr))
#define kOffArch ((uint32_t)offsetof(struct seccomp_data, arch))
#define kOffArgLo(i) ((uint32_t)(offsetof(struct seccomp_data, args) + sizeof(uint64_t) * (i)))
#define kOffArgHi(i) ((uint32_t)(offsetof(struct seccomp_data, args) + sizeof(uint64_t) * (i) + 4))

int shuttle_build_filter(struct sock_filter* out, size_t cap) {
  /* Instruction indices of the fixed parts. */
  const size_t kFirstNotified = 5;
  const size_t kAllow = kFirstNotified + kNotifiedCount;
  const size_t kSendtoCheck = kAllow + 1;
  const size_t kAllow2 = kSendtoCheck + 4;
  const size_t kNotify = kAllow2 + 1;
  const size_t kDeny = kNotify + 1;
  const size_t kLength = kDeny + 1;
  if (cap < kLength || kLength > SHUTTLE_FILTER_MAX_INSNS) return -1;

/* Relative jump from instruction `at` to `target` (BPF jumps count from the next one). */
#define REL(at, target) ((unsigned char)((target) - (at)-1))
  size_t i = 0;
  out[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kOffArch);
  ++i;
  out[i] =
      (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, REL(i, kDeny));
  ++i;
  out[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kOffNr);
  ++i;
  out[i] =
      (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, REL(i, kDeny), 0);
  ++i;
  out[i] =
      (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendto, REL(i, kSendtoCheck), 0);
  ++i;
  for (size_t k = 0; k < kNotifiedCount; ++k, ++i) {
    out[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)kNotified[k],
                                          REL(i, kNotify), 0);
  }
  out[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW); /* kAllow */
  /* kSendtoCheck: dest_addr == NULL means a plain send() on a connected socket. */
  out[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kOffArgLo(4));
  ++i;
  out[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, REL(i, kNotify));
  ++i;
  out[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kOffArgHi(4));
  ++i;
  out[i] =
      (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, REL(i, kAllow2), REL(i, kNotify));
  ++i;
  out[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);      /* kAllow2 */
  out[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF); /* kNotify */
  out[i++] = (struct sock_filter)BPF_STMT(
      BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)); /* kDeny */
#undef REL
  return i == kLength ? (int)i : -1;
}
