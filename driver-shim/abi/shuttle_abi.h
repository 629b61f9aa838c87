/* The versioned wire format between a Shuttle interception shim (the Linux launcher, the
 * Windows hook DLL) and the agent: small, length-prefixed, fixed-layout messages, encoded
 * little-endian field by field (no struct is ever sent as memory), so both platforms and
 * compilers agree on every byte. Plain C99, libc only.
 *
 * Wire layout (all integers little-endian, no padding):
 *   header, 16 bytes: u32 magic ("SHTL"), u16 version, u16 type, u32 length (of the payload
 *                     that follows), u32 seq (sender's sequence number)
 *   HELLO        12: u16 platform, u16 max_version, u32 pid, u32 flags
 *   LISTENER      8: i32 fd, u32 flags
 *   INTERACTION  32 + name_len + target_len:
 *                    u32 kind, u32 pid, u32 tid, i32 target_pid, u32 arg0, u32 arg1, u32 flags,
 *                    u16 name_len, u16 target_len, name bytes, target bytes
 *                    (each string's length counts its terminating NUL; both are >= 1)
 *   VERDICT      16: u32 seq_ref, u32 verdict, i32 error, u32 flags
 *   ACK           8: u32 seq_ref, i32 status
 *
 * Decoding never trusts its input: every function bounds-checks, rejects unknown types and
 * versions, wrong lengths, unterminated or embedded-NUL strings and out-of-range fields, and
 * reports why with a SHUTTLE_ABI_E_* code. Thread-safe (no state).
 */
#ifndef SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_ABI_H_
#define SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHUTTLE_ABI_MAGIC 0x4C544853u /* The bytes 'S' 'H' 'T' 'L' on the wire. */
#define SHUTTLE_ABI_VERSION 1u
#define SHUTTLE_ABI_HEADER_SIZE 16u

/* Strings, counting the terminating NUL. Linux names are at most 4096 (PATH_MAX); Windows
 * object and pipe names are far shorter in practice; 1024 bounds every name the shims report. */
#define SHUTTLE_ABI_NAME_MAX 1024u
#define SHUTTLE_ABI_TARGET_MAX 1024u

#define SHUTTLE_ABI_HELLO_SIZE 12u
#define SHUTTLE_ABI_LISTENER_SIZE 8u
#define SHUTTLE_ABI_INTERACTION_FIXED_SIZE 32u
#define SHUTTLE_ABI_VERDICT_SIZE 16u
#define SHUTTLE_ABI_ACK_SIZE 8u
#define SHUTTLE_ABI_MAX_PAYLOAD \
  (SHUTTLE_ABI_INTERACTION_FIXED_SIZE + SHUTTLE_ABI_NAME_MAX + SHUTTLE_ABI_TARGET_MAX)
#define SHUTTLE_ABI_MAX_MESSAGE (SHUTTLE_ABI_HEADER_SIZE + SHUTTLE_ABI_MAX_PAYLOAD)

/* Message types. */
enum shuttle_abi_type {
  SHUTTLE_ABI_HELLO = 1,       /* shim -> agent: who is speaking */
  SHUTTLE_ABI_LISTENER = 2,    /* Linux launcher -> agent: take my seccomp listener fd */
  SHUTTLE_ABI_INTERACTION = 3, /* shim -> agent: a call to decide (Windows hook DLL) */
  SHUTTLE_ABI_VERDICT = 4,     /* agent -> shim: the answer to an INTERACTION */
  SHUTTLE_ABI_ACK = 5,         /* either way: the message seq_ref was handled */
};
#define SHUTTLE_ABI_TYPE_MAX 5u

enum shuttle_abi_platform {
  SHUTTLE_ABI_PLATFORM_LINUX = 1,
  SHUTTLE_ABI_PLATFORM_WINDOWS = 2,
};

/* Interaction kinds: the numbering of shuttle.v1.InteractionKind (proto/shuttle/v1/types.proto);
 * a unit test checks that they stay equal. */
enum shuttle_abi_kind {
  SHUTTLE_ABI_KIND_UNIX_CONNECT = 1,
  SHUTTLE_ABI_KIND_TCP_CONNECT = 2,
  SHUTTLE_ABI_KIND_UDP_SEND = 3,
  SHUTTLE_ABI_KIND_FIFO_OPEN = 4,
  SHUTTLE_ABI_KIND_SHM_OPEN = 5,
  SHUTTLE_ABI_KIND_MQ_OPEN = 6,
  SHUTTLE_ABI_KIND_SYNC_OPEN = 7,
  SHUTTLE_ABI_KIND_SIGNAL = 8,
  SHUTTLE_ABI_KIND_INVOKE = 9,
  SHUTTLE_ABI_KIND_NAME_TRANSFER = 10,
  SHUTTLE_ABI_KIND_DEPEND = 11,
};
#define SHUTTLE_ABI_KIND_MAX 11u

/* Verdicts: the numbering of shuttle.v1.Verdict. ALLOW: let the call proceed unchanged (error
 * must be 0). DENY: fail it with `error` (an errno on Linux, a Win32 error on Windows; not 0).
 * REDIRECT: the agent has opened the object elsewhere; flags say how it is handed over. */
enum shuttle_abi_verdict_code {
  SHUTTLE_ABI_VERDICT_ALLOW = 1,
  SHUTTLE_ABI_VERDICT_DENY = 2,
  SHUTTLE_ABI_VERDICT_REDIRECT = 3,
};

/* INTERACTION flags. */
#define SHUTTLE_ABI_IX_CREATE 0x1u         /* The call may create the object (O_CREAT...). */
#define SHUTTLE_ABI_IX_NAME_TRUNCATED 0x2u /* The shim cut the name to SHUTTLE_ABI_NAME_MAX. */
#define SHUTTLE_ABI_IX_FLAGS_ALL 0x3u

/* Result codes: 0 on success, negative on failure. */
enum shuttle_abi_error {
  SHUTTLE_ABI_OK = 0,
  SHUTTLE_ABI_E_ARG = -1,     /* A NULL pointer or an output buffer too small to encode into. */
  SHUTTLE_ABI_E_SHORT = -2,   /* The input ends before the header or the payload does. */
  SHUTTLE_ABI_E_MAGIC = -3,   /* Not a Shuttle message. */
  SHUTTLE_ABI_E_VERSION = -4, /* A version this side does not speak. */
  SHUTTLE_ABI_E_TYPE = -5,    /* Unknown message type. */
  SHUTTLE_ABI_E_LENGTH = -6,  /* Payload length wrong for the type, or over the bound. */
  SHUTTLE_ABI_E_STRING = -7,  /* A string without its NUL, with an embedded NUL, or too long. */
  SHUTTLE_ABI_E_FIELD = -8,   /* A field out of range (kind, platform, verdict, fd, flags). */
};

struct shuttle_abi_header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t length;
  uint32_t seq;
};

struct shuttle_abi_hello {
  uint16_t platform;    /* enum shuttle_abi_platform */
  uint16_t max_version; /* Highest wire version the sender speaks (>= header version). */
  uint32_t pid;         /* The sender's pid in its own PID namespace (informative only: the
                           agent takes the authoritative pid from the kernel). */
  uint32_t flags;       /* Reserved, 0. */
};

struct shuttle_abi_listener {
  int32_t fd;     /* The listener's number in the sender's fd table (>= 0). */
  uint32_t flags; /* Reserved, 0. */
};

struct shuttle_abi_interaction {
  uint32_t kind; /* enum shuttle_abi_kind */
  uint32_t pid;  /* Caller process and thread as the shim sees them. */
  uint32_t tid;
  int32_t target_pid;              /* signal: the target process; else 0. */
  uint32_t arg0;                   /* Kind-specific: signal number, Win32 desired access, port... */
  uint32_t arg1;                   /* Kind-specific: creation disposition, window message... */
  uint32_t flags;                  /* SHUTTLE_ABI_IX_* */
  char name[SHUTTLE_ABI_NAME_MAX]; /* The object's name, NUL-terminated (may be ""). */
  char target[SHUTTLE_ABI_TARGET_MAX]; /* Secondary text (program, command line), or "". */
};

struct shuttle_abi_verdict {
  uint32_t seq_ref; /* seq of the INTERACTION answered. */
  uint32_t verdict; /* enum shuttle_abi_verdict_code */
  int32_t error;    /* errno / Win32 error for DENY; 0 otherwise. */
  uint32_t flags;   /* Reserved, 0. */
};

struct shuttle_abi_ack {
  uint32_t seq_ref; /* seq of the message acknowledged. */
  int32_t status;   /* 0: handled; else a positive errno / Win32 error. */
};

/* One decoded (or to-be-encoded) message. `header.type` selects the union member. */
struct shuttle_abi_message {
  struct shuttle_abi_header header;
  union {
    struct shuttle_abi_hello hello;
    struct shuttle_abi_listener listener;
    struct shuttle_abi_interaction interaction;
    struct shuttle_abi_verdict verdict;
    struct shuttle_abi_ack ack;
  } u;
};

/* Decodes and validates the 16-byte header at `buf` (magic, version, type, length within the
 * bound for its type). SHUTTLE_ABI_E_SHORT if len < SHUTTLE_ABI_HEADER_SIZE. */
int shuttle_abi_decode_header(const void* buf, size_t len, struct shuttle_abi_header* out);

/* Decodes one whole message from `buf`. On success fills `out` and, if `consumed` is not NULL,
 * stores the number of bytes it used (header + payload); `buf` may hold more after it. On
 * failure `out` is unspecified. */
int shuttle_abi_decode(const void* buf, size_t len, struct shuttle_abi_message* out,
                       size_t* consumed);

/* Encodes `msg` (its header's type and seq; magic, version and length are filled in here) into
 * `buf`, validating it as decode would. On success stores the byte count in `*written`. */
int shuttle_abi_encode(const struct shuttle_abi_message* msg, void* buf, size_t cap,
                       size_t* written);

/* A static, human-readable text for a SHUTTLE_ABI_* code. */
const char* shuttle_abi_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_ABI_H_ */
