// Turns one intercepted syscall (number, arguments, caller) into the interaction it attempts:
// its kind (shuttle.v1.InteractionKind) and object, as the policy names objects
// (policy/matcher.h): unix sockets by path or "@abstract", IP as "127.0.0.1:5432" or
// "[::1]:5432", POSIX queues as "/name", SysV keys as "key:0x0000abcd", signal targets as
// "pid:N". Reads the caller's memory through ProcessMemory and its fds through ProcessFds.
//
// Mapping (DESIGN.md section 1): connect/sendto/sendmsg/sendmmsg to AF_UNIX -> unix-connect;
// to a loopback IP (or the "any" address, which Linux connects locally) -> tcp-connect for
// stream sockets (connect, or a send with MSG_FASTOPEN), udp-send for datagram and raw sockets
// (a UDP connect counts: later sends carry no address and are not intercepted); other IP
// destinations and other families are not crossings between this host's VMs and continue
// without a decision. mq_open and msgget -> mq-open, shmget -> shm-open, semget -> sync-open
// (SysV semaphores; DESIGN.md names no Linux mechanism for it), IPC_PRIVATE continues.
// kill/tkill/tgkill/rt_(tg)sigqueueinfo/pidfd_send_signal -> signal (signal 0 included: an
// existence probe).
//
// Never trusts the caller: a garbage pointer is answered with EFAULT, an oversized length with
// EINVAL/ENAMETOOLONG (the errno the kernel itself would give), and a call the kernel would
// reject on its own is simply continued so the kernel rejects it. Does not allocate: the
// object name lives in a fixed buffer.
//
// TOCTOU: the caller (or another of its threads) may change its memory after we read it. For
// continue, the kernel re-reads the arguments itself, so a decision is only advisory: a caller
// that races its memory reaches whatever its own VM's namespaces let it reach, never more.
// Isolation is the kernel's; CONTINUE never opens a cross-VM path. Only a broker that acts on
// the decoded name (redirect, fd injection) must use its own copy, which this struct is.
#ifndef SHUTTLE_AGENT_INTERCEPT_SYSCALL_DECODER_H_
#define SHUTTLE_AGENT_INTERCEPT_SYSCALL_DECODER_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/intercept/process_access.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent::intercept {

// Longest object name: "@" + 107 bytes of abstract socket name, "/" + NAME_MAX (255) queue
// name, "[v6 address%scope]:port".
inline constexpr size_t kMaxObjectName = 320;

// sendmmsg's vector is capped at this many messages (UIO_MAXIOV), as the kernel does.
inline constexpr uint32_t kMaxMmsgParts = 1024;

// One intercepted syscall, as a backend reports it (for seccomp: struct seccomp_notif).
struct SyscallEvent {
  uint64_t id = 0;    // The backend's notification id.
  pid_t pid = 0;      // Calling thread, in the agent's PID namespace.
  int32_t nr = -1;    // x86_64 syscall number.
  uint32_t arch = 0;  // AUDIT_ARCH_*.
  uint64_t args[6] = {};
};

// What a call reaches. Only the fields of its family are meaningful.
struct ObjectInfo {
  v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
  char name_buf[kMaxObjectName] = {};
  size_t name_len = 0;
  std::string_view name() const { return std::string_view(name_buf, name_len); }

  // connect / sendto / sendmsg / sendmmsg.
  int fd = -1;
  int family = 0;         // AF_UNIX, AF_INET, AF_INET6.
  int socket_type = 0;    // SOCK_STREAM, SOCK_DGRAM...; 0 when not looked up (AF_UNIX).
  bool abstract = false;  // AF_UNIX abstract name (leading NUL; embedded NULs shown as '@').
  bool relative = false;  // AF_UNIX path relative to the caller's working directory.
  // AF_UNIX abstract: the raw name without its leading NUL, embedded NULs kept (the broker
  // connects to exactly this; name() is the printable form).
  char abstract_raw[107] = {};
  uint8_t abstract_len = 0;
  std::string_view abstract_name() const { return std::string_view(abstract_raw, abstract_len); }
  bool loopback = false;  // IP: a loopback (or "any", which Linux connects locally) address.
  uint16_t port = 0;
  // mq_open, shmget, msgget, semget.
  uint32_t ipc_key = 0;  // SysV key.
  bool create = false;   // O_CREAT / IPC_CREAT.
  // kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal.
  int32_t target_pid = 0;  // As the caller names it (its own PID namespace); kill(): 0 is its
                           // process group, -1 every process it may signal, < -1 a group.
  int32_t target_tid = 0;  // tkill/tgkill/rt_tgsigqueueinfo: the thread.
  int signal = 0;          // 0: an existence probe, nothing is delivered.
};

enum class Disposition : uint8_t {
  kDecide,    // An interaction: ask the decider about `object`.
  kContinue,  // Not an interaction (another address family, IPC_PRIVATE, no address, a call
              // the kernel rejects by itself): let it run unchanged without a decision.
  kFail,      // Malformed: answer `error`, the errno the kernel would have given.
  kGone,      // The caller went away while we looked: there is nobody to answer.
};

struct Decoded {
  Disposition disposition = Disposition::kContinue;
  int error = 0;               // kFail: positive errno.
  const char* reason = "";     // Static text for logs and tests.
  bool read_process = false;   // Memory or fds were read: check ID_VALID before trusting.
  bool inspect_error = false;  // kFail because the agent could not look (not the caller's fault).
  ObjectInfo object;
};

// Thread-compatible (no state of its own beyond its collaborators, which are thread-safe).
class SyscallDecoder {
 public:
  // Collaborators are not owned and must outlive the decoder.
  SyscallDecoder(ProcessMemory& memory, ProcessFds& fds) : memory_(memory), fds_(fds) {}

  // Decodes part `part` of `event` into `*out` and returns true, or returns false when there
  // is no such part. Every syscall has exactly part 0, except sendmmsg, which has one part per
  // message of its vector (at most kMaxMmsgParts; none for an empty vector).
  bool Decode(const SyscallEvent& event, uint32_t part, Decoded* out);

 private:
  void DecodeAddress(const SyscallEvent& event, int fd, uint64_t addr, int64_t addrlen,
                     int send_flags, bool is_connect, Decoded* out);
  void DecodeMsghdr(const SyscallEvent& event, uint64_t msghdr_addr, int send_flags, bool first,
                    Decoded* out, bool* stop);
  void DecodeMqOpen(const SyscallEvent& event, Decoded* out);
  void DecodeSysvKey(const SyscallEvent& event, v1::InteractionKind kind, Decoded* out);
  void DecodeSignal(const SyscallEvent& event, Decoded* out);

  ProcessMemory& memory_;
  ProcessFds& fds_;
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_SYSCALL_DECODER_H_
