/* The seccomp filter that shuttle-launch installs: user-notify (SECCOMP_RET_USER_NOTIF) for
 * the interaction syscalls only, allow for everything else, and EPERM for any syscall that is
 * not native x86_64 (i386 via int 0x80, or the x32 ABI), whose numbers would otherwise bypass
 * the checks. Plain C, libc only; built by hand with <linux/filter.h>.
 *
 * Notified (x86_64 numbers): connect; sendto only when dest_addr (args[4]) != NULL; sendmsg;
 * sendmmsg; mq_open; shmget, msgget, semget; kill, tkill, tgkill, rt_sigqueueinfo,
 * rt_tgsigqueueinfo, pidfd_send_signal. Never notified: read, write, open, openat and every
 * other syscall, so that non-interaction syscalls run at native speed (the kernel's seccomp
 * action cache turns a filter path that never reads the arguments into a constant "allow").
 */
#ifndef SHUTTLE_DRIVER_SHIM_LINUX_SECCOMP_FILTER_H_
#define SHUTTLE_DRIVER_SHIM_LINUX_SECCOMP_FILTER_H_

#include <linux/filter.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound of the program's length in instructions. */
#define SHUTTLE_FILTER_MAX_INSNS 64

/* Writes the filter program into `out` (room for `cap` instructions) and returns its length,
 * or -1 if `cap` is too small. */
int shuttle_build_filter(struct sock_filter* out, size_t cap);

/* The syscall numbers that are always notified (sendto is notified conditionally and is not
 * in this list). `*count` receives the number of entries. */
const int* shuttle_notified_syscalls(size_t* count);

#ifdef __cplusplus
}
#endif

#endif /* SHUTTLE_DRIVER_SHIM_LINUX_SECCOMP_FILTER_H_ */
