/* The versioned wire format between the invocation stand-in (driver-shim/linux/invoke_stub.c,
 * the binary bound over a program that a rule places in another VM) and the agent's invocation
 * server (agent/invoke/), over a SOCK_STREAM unix socket. Plain C99, libc only; integers are
 * little-endian and encoded field by field, as in shuttle_abi.h, whose SHUTTLE_ABI_E_* result
 * codes it shares.
 *
 * Wire layout (no padding):
 *   header, 12 bytes: u32 magic ("SHIV"), u16 version, u16 type, u32 length (of the payload)
 *   REQUEST  12 + strings: u32 flags (0), u32 argc (>= 1), u32 envc, then 1 + argc + envc
 *            NUL-terminated strings back to back: cwd, argv[0..argc), envp[0..envc).
 *            Sent once, first, by the stand-in, with its fds 0, 1, 2 attached (SCM_RIGHTS).
 *   SIGNAL    4: u32 signo (1..64): a signal the stand-in received, for the invoked program.
 *   RESULT   10 + message: u32 outcome, i32 value, u16 message_len (counting its NUL, >= 1),
 *            message bytes. The agent's last message: how the invocation ended.
 *
 * Decoding never trusts its input: lengths, counts, strings (each NUL-terminated, no bytes
 * after the last one) and fields are checked, and failures name the reason with a code.
 * Thread-safe (no state).
 */
#ifndef SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_INVOKE_ABI_H_
#define SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_INVOKE_ABI_H_

#include <stddef.h>
#include <stdint.h>

#include "driver-shim/abi/shuttle_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SHUTTLE_INVOKE_MAGIC 0x56494853u /* The bytes 'S' 'H' 'I' 'V' on the wire. */
#define SHUTTLE_INVOKE_VERSION 1u
#define SHUTTLE_INVOKE_HEADER_SIZE 12u

/* Bounds. A request carries a whole command line and environment: Linux allows up to a quarter
 * of the stack limit for both (2 MiB by default); the agent takes at most 1 MiB, and at most
 * 16384 arguments and 16384 environment entries. */
#define SHUTTLE_INVOKE_REQUEST_FIXED_SIZE 12u
#define SHUTTLE_INVOKE_MAX_REQUEST (1024u * 1024u)
#define SHUTTLE_INVOKE_MAX_STRINGS 16384u
#define SHUTTLE_INVOKE_SIGNAL_SIZE 4u
#define SHUTTLE_INVOKE_RESULT_FIXED_SIZE 10u
#define SHUTTLE_INVOKE_MESSAGE_MAX 512u /* A RESULT's message, counting its NUL. */

/* The path of the agent's invocation socket inside every VM. */
#define SHUTTLE_INVOKE_SOCKET_PATH "/run/shuttle/invoke.sock"

enum shuttle_invoke_type {
  SHUTTLE_INVOKE_REQUEST = 1, /* stand-in -> agent: run my program in its VM */
  SHUTTLE_INVOKE_SIGNAL = 2,  /* stand-in -> agent: forward this signal */
  SHUTTLE_INVOKE_RESULT = 3,  /* agent -> stand-in: the invocation is over */
};
#define SHUTTLE_INVOKE_TYPE_MAX 3u

enum shuttle_invoke_outcome {
  SHUTTLE_INVOKE_EXITED = 1,   /* value: the program's exit code (0..255). */
  SHUTTLE_INVOKE_SIGNALED = 2, /* value: the signal that killed it (1..64). */
  SHUTTLE_INVOKE_DENIED = 3,   /* The policy refused; value 0; message says why. */
  SHUTTLE_INVOKE_FAILED = 4,   /* It could not be started; value: an errno (> 0); message. */
};
#define SHUTTLE_INVOKE_OUTCOME_MAX 4u

struct shuttle_invoke_header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t length;
};

/* A decoded REQUEST: views into the decoded buffer (valid as long as it is). `strings` holds
 * 1 + argc + envc NUL-terminated strings back to back (cwd first); walk them with
 * shuttle_invoke_next_string. */
struct shuttle_invoke_request {
  uint32_t flags;
  uint32_t argc;
  uint32_t envc;
  const char* strings;
  size_t strings_len;
};

struct shuttle_invoke_result {
  uint32_t outcome; /* enum shuttle_invoke_outcome */
  int32_t value;
  char message[SHUTTLE_INVOKE_MESSAGE_MAX]; /* NUL-terminated; may be "". */
};

/* Decodes and validates a 12-byte header: magic, version, known type, and a payload length that
 * the type allows (exact for SIGNAL; within its bounds for REQUEST and RESULT). */
int shuttle_invoke_decode_header(const void* buf, size_t len, struct shuttle_invoke_header* out);

/* Decode one payload of the given type (`len` bytes, exactly the header's length). */
int shuttle_invoke_decode_request(const void* payload, size_t len,
                                  struct shuttle_invoke_request* out);
int shuttle_invoke_decode_signal(const void* payload, size_t len, uint32_t* signo);
int shuttle_invoke_decode_result(const void* payload, size_t len,
                                 struct shuttle_invoke_result* out);

/* The next string after `s` in a validated request's `strings`. */
const char* shuttle_invoke_next_string(const char* s);

/* Bytes a REQUEST for these strings takes on the wire (header included); 0 when it exceeds the
 * bounds (SHUTTLE_INVOKE_MAX_REQUEST, SHUTTLE_INVOKE_MAX_STRINGS, argc 0) or an argument is
 * NULL. */
size_t shuttle_invoke_request_size(const char* cwd, uint32_t argc, const char* const* argv,
                                   uint32_t envc, const char* const* envp);

/* Encoders: each writes a whole message (header included) into `buf` of `cap` bytes and stores
 * its size in `*written`. SHUTTLE_ABI_E_ARG when `cap` is too small or a pointer is NULL,
 * SHUTTLE_ABI_E_LENGTH when the request exceeds the bounds, SHUTTLE_ABI_E_FIELD for a signal or
 * outcome out of range. A RESULT message longer than SHUTTLE_INVOKE_MESSAGE_MAX - 1 is cut. */
int shuttle_invoke_encode_request(const char* cwd, uint32_t argc, const char* const* argv,
                                  uint32_t envc, const char* const* envp, void* buf, size_t cap,
                                  size_t* written);
int shuttle_invoke_encode_signal(uint32_t signo, void* buf, size_t cap, size_t* written);
int shuttle_invoke_encode_result(uint32_t outcome, int32_t value, const char* message, void* buf,
                                 size_t cap, size_t* written);

#ifdef __cplusplus
}
#endif

#endif /* SHUTTLE_DRIVER_SHIM_ABI_SHUTTLE_INVOKE_ABI_H_ */
