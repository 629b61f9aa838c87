/* Encoding and validation of the stand-in<->agent invocation wire format (see
 * shuttle_invoke_abi.h). */
#include "driver-shim/abi/shuttle_invoke_abi.h"

#include <string.h>

#include "driver-shim/abi/le.h"

static int LengthOk(uint16_t type, uint32_t length) {
  switch (type) {
    case SHUTTLE_INVOKE_REQUEST:
      /* cwd and argv[0] at least, one byte each. */
      return length >= SHUTTLE_INVOKE_REQUEST_FIXED_SIZE + 2 &&
             length <= SHUTTLE_INVOKE_MAX_REQUEST - SHUTTLE_INVOKE_HEADER_SIZE;
    case SHUTTLE_INVOKE_SIGNAL:
      return length == SHUTTLE_INVOKE_SIGNAL_SIZE;
    case SHUTTLE_INVOKE_RESULT:
      return length >= SHUTTLE_INVOKE_RESULT_FIXED_SIZE + 1 &&
             length <= SHUTTLE_INVOKE_RESULT_FIXED_SIZE + SHUTTLE_INVOKE_MESSAGE_MAX;
    default:
      return 0;
  }
}

static int SignalOk(uint32_t signo) { return signo >= 1 && signo <= 64; }

static int ResultOk(uint32_t outcome, int32_t value) {
  switch (outcome) {
    case SHUTTLE_INVOKE_EXITED:
      return value >= 0 && value <= 255;
    case SHUTTLE_INVOKE_SIGNALED:
      return SignalOk((uint32_t)value);
    case SHUTTLE_INVOKE_DENIED:
      return value == 0;
    case SHUTTLE_INVOKE_FAILED:
      return value > 0;
    default:
      return 0;
  }
}

int shuttle_invoke_decode_header(const void* buf, size_t len, struct shuttle_invoke_header* out) {
  if (buf == NULL || out == NULL) return SHUTTLE_ABI_E_ARG;
  if (len < SHUTTLE_INVOKE_HEADER_SIZE) return SHUTTLE_ABI_E_SHORT;
  const unsigned char* p = (const unsigned char*)buf;
  out->magic = Get32(p);
  out->version = Get16(p + 4);
  out->type = Get16(p + 6);
  out->length = Get32(p + 8);
  if (out->magic != SHUTTLE_INVOKE_MAGIC) return SHUTTLE_ABI_E_MAGIC;
  if (out->version != SHUTTLE_INVOKE_VERSION) return SHUTTLE_ABI_E_VERSION;
  if (out->type < 1 || out->type > SHUTTLE_INVOKE_TYPE_MAX) return SHUTTLE_ABI_E_TYPE;
  if (!LengthOk(out->type, out->length)) return SHUTTLE_ABI_E_LENGTH;
  return SHUTTLE_ABI_OK;
}

int shuttle_invoke_decode_request(const void* payload, size_t len,
                                  struct shuttle_invoke_request* out) {
  if (payload == NULL || out == NULL) return SHUTTLE_ABI_E_ARG;
  if (len < SHUTTLE_INVOKE_REQUEST_FIXED_SIZE) return SHUTTLE_ABI_E_SHORT;
  if (len > SHUTTLE_INVOKE_MAX_REQUEST - SHUTTLE_INVOKE_HEADER_SIZE) return SHUTTLE_ABI_E_LENGTH;
  const unsigned char* p = (const unsigned char*)payload;
  out->flags = Get32(p);
  out->argc = Get32(p + 4);
  out->envc = Get32(p + 8);
  if (out->flags != 0) return SHUTTLE_ABI_E_FIELD;
  if (out->argc < 1 || out->argc > SHUTTLE_INVOKE_MAX_STRINGS ||
      out->envc > SHUTTLE_INVOKE_MAX_STRINGS) {
    return SHUTTLE_ABI_E_FIELD;
  }
  const char* strings = (const char*)p + SHUTTLE_INVOKE_REQUEST_FIXED_SIZE;
  size_t strings_len = len - SHUTTLE_INVOKE_REQUEST_FIXED_SIZE;
  /* Exactly 1 + argc + envc NULs, the last one ending the payload. */
  uint32_t want = 1 + out->argc + out->envc;
  uint32_t seen = 0;
  size_t at = 0;
  while (at < strings_len) {
    const char* nul = (const char*)memchr(strings + at, '\0', strings_len - at);
    if (nul == NULL) return SHUTTLE_ABI_E_STRING; /* Bytes after the last NUL. */
    if (++seen > want) return SHUTTLE_ABI_E_STRING;
    at = (size_t)(nul - strings) + 1;
  }
  if (seen != want) return SHUTTLE_ABI_E_STRING;
  if (strings[0] != '/') return SHUTTLE_ABI_E_FIELD; /* cwd is absolute. */
  out->strings = strings;
  out->strings_len = strings_len;
  return SHUTTLE_ABI_OK;
}

int shuttle_invoke_decode_signal(const void* payload, size_t len, uint32_t* signo) {
  if (payload == NULL || signo == NULL) return SHUTTLE_ABI_E_ARG;
  if (len != SHUTTLE_INVOKE_SIGNAL_SIZE) return SHUTTLE_ABI_E_LENGTH;
  *signo = Get32((const unsigned char*)payload);
  return SignalOk(*signo) ? SHUTTLE_ABI_OK : SHUTTLE_ABI_E_FIELD;
}

int shuttle_invoke_decode_result(const void* payload, size_t len,
                                 struct shuttle_invoke_result* out) {
  if (payload == NULL || out == NULL) return SHUTTLE_ABI_E_ARG;
  if (len < SHUTTLE_INVOKE_RESULT_FIXED_SIZE + 1) return SHUTTLE_ABI_E_SHORT;
  if (len > SHUTTLE_INVOKE_RESULT_FIXED_SIZE + SHUTTLE_INVOKE_MESSAGE_MAX) {
    return SHUTTLE_ABI_E_LENGTH;
  }
  const unsigned char* p = (const unsigned char*)payload;
  out->outcome = Get32(p);
  out->value = (int32_t)Get32(p + 4);
  uint32_t message_len = Get16(p + 8);
  if (message_len < 1 || SHUTTLE_INVOKE_RESULT_FIXED_SIZE + (size_t)message_len != len) {
    return SHUTTLE_ABI_E_LENGTH;
  }
  const unsigned char* message = p + SHUTTLE_INVOKE_RESULT_FIXED_SIZE;
  if (message[message_len - 1] != '\0' || memchr(message, '\0', message_len - 1) != NULL) {
    return SHUTTLE_ABI_E_STRING;
  }
  if (!ResultOk(out->outcome, out->value)) return SHUTTLE_ABI_E_FIELD;
  memcpy(out->message, message, message_len);
  return SHUTTLE_ABI_OK;
}

const char* shuttle_invoke_next_string(const char* s) { return s + strlen(s) + 1; }

size_t shuttle_invoke_request_size(const char* cwd, uint32_t argc, const char* const* argv,
                                   uint32_t envc, const char* const* envp) {
  if (cwd == NULL || (argv == NULL && argc > 0) || (envp == NULL && envc > 0)) return 0;
  if (argc < 1 || argc > SHUTTLE_INVOKE_MAX_STRINGS || envc > SHUTTLE_INVOKE_MAX_STRINGS) return 0;
  size_t total = SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_REQUEST_FIXED_SIZE;
  total += strnlen(cwd, SHUTTLE_INVOKE_MAX_REQUEST) + 1;
  for (uint32_t i = 0; i < argc + envc; ++i) {
    const char* s = i < argc ? argv[i] : envp[i - argc];
    if (s == NULL) return 0;
    total += strnlen(s, SHUTTLE_INVOKE_MAX_REQUEST) + 1;
    if (total > SHUTTLE_INVOKE_MAX_REQUEST) return 0;
  }
  return total > SHUTTLE_INVOKE_MAX_REQUEST ? 0 : total;
}

static void PutHeader(unsigned char* p, uint16_t type, uint32_t length) {
  Put32(p, SHUTTLE_INVOKE_MAGIC);
  Put16(p + 4, SHUTTLE_INVOKE_VERSION);
  Put16(p + 6, type);
  Put32(p + 8, length);
}

int shuttle_invoke_encode_request(const char* cwd, uint32_t argc, const char* const* argv,
                                  uint32_t envc, const char* const* envp, void* buf, size_t cap,
                                  size_t* written) {
  if (buf == NULL || written == NULL || cwd == NULL) return SHUTTLE_ABI_E_ARG;
  if (cwd[0] != '/') return SHUTTLE_ABI_E_FIELD;
  size_t total = shuttle_invoke_request_size(cwd, argc, argv, envc, envp);
  if (total == 0) return SHUTTLE_ABI_E_LENGTH;
  if (cap < total) return SHUTTLE_ABI_E_ARG;
  unsigned char* p = (unsigned char*)buf;
  PutHeader(p, SHUTTLE_INVOKE_REQUEST, (uint32_t)(total - SHUTTLE_INVOKE_HEADER_SIZE));
  p += SHUTTLE_INVOKE_HEADER_SIZE;
  Put32(p, 0);
  Put32(p + 4, argc);
  Put32(p + 8, envc);
  p += SHUTTLE_INVOKE_REQUEST_FIXED_SIZE;
  for (uint32_t i = 0; i <= argc + envc; ++i) {
    const char* s = i == 0 ? cwd : (i <= argc ? argv[i - 1] : envp[i - 1 - argc]);
    size_t n = strlen(s) + 1;
    memcpy(p, s, n);
    p += n;
  }
  *written = total;
  return SHUTTLE_ABI_OK;
}

int shuttle_invoke_encode_signal(uint32_t signo, void* buf, size_t cap, size_t* written) {
  if (buf == NULL || written == NULL) return SHUTTLE_ABI_E_ARG;
  if (!SignalOk(signo)) return SHUTTLE_ABI_E_FIELD;
  if (cap < SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_SIGNAL_SIZE) return SHUTTLE_ABI_E_ARG;
  unsigned char* p = (unsigned char*)buf;
  PutHeader(p, SHUTTLE_INVOKE_SIGNAL, SHUTTLE_INVOKE_SIGNAL_SIZE);
  Put32(p + SHUTTLE_INVOKE_HEADER_SIZE, signo);
  *written = SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_SIGNAL_SIZE;
  return SHUTTLE_ABI_OK;
}

int shuttle_invoke_encode_result(uint32_t outcome, int32_t value, const char* message, void* buf,
                                 size_t cap, size_t* written) {
  if (buf == NULL || written == NULL || message == NULL) return SHUTTLE_ABI_E_ARG;
  if (!ResultOk(outcome, value)) return SHUTTLE_ABI_E_FIELD;
  size_t message_len = strnlen(message, SHUTTLE_INVOKE_MESSAGE_MAX - 1) + 1;
  size_t total = SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_RESULT_FIXED_SIZE + message_len;
  if (cap < total) return SHUTTLE_ABI_E_ARG;
  unsigned char* p = (unsigned char*)buf;
  PutHeader(p, SHUTTLE_INVOKE_RESULT, (uint32_t)(total - SHUTTLE_INVOKE_HEADER_SIZE));
  p += SHUTTLE_INVOKE_HEADER_SIZE;
  Put32(p, outcome);
  Put32(p + 4, (uint32_t)value);
  Put16(p + 8, (uint16_t)message_len);
  memcpy(p + SHUTTLE_INVOKE_RESULT_FIXED_SIZE, message, message_len - 1);
  p[SHUTTLE_INVOKE_RESULT_FIXED_SIZE + message_len - 1] = '\0';
  *written = total;
  return SHUTTLE_ABI_OK;
}
