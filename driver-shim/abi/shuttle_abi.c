/* Encoding and validation of the shim<->agent wire format (see shuttle_abi.h). Every integer is
 * moved byte by byte in little-endian order, so the layout never depends on the compiler. */
#include "driver-shim/abi/shuttle_abi.h"

#include <string.h>

#include "driver-shim/abi/le.h"

/* Payload length rule of each type: exact for fixed types, a range for INTERACTION. */
static int LengthOk(uint16_t type, uint32_t length) {
  switch (type) {
    case SHUTTLE_ABI_HELLO:
      return length == SHUTTLE_ABI_HELLO_SIZE;
    case SHUTTLE_ABI_LISTENER:
      return length == SHUTTLE_ABI_LISTENER_SIZE;
    case SHUTTLE_ABI_INTERACTION:
      return length >= SHUTTLE_ABI_INTERACTION_FIXED_SIZE + 2 && length <= SHUTTLE_ABI_MAX_PAYLOAD;
    case SHUTTLE_ABI_VERDICT:
      return length == SHUTTLE_ABI_VERDICT_SIZE;
    case SHUTTLE_ABI_ACK:
      return length == SHUTTLE_ABI_ACK_SIZE;
    default:
      return 0;
  }
}

/* Field checks shared by encode and decode. */
static int CheckHello(const struct shuttle_abi_hello* h) {
  if (h->platform != SHUTTLE_ABI_PLATFORM_LINUX && h->platform != SHUTTLE_ABI_PLATFORM_WINDOWS) {
    return SHUTTLE_ABI_E_FIELD;
  }
  if (h->max_version < SHUTTLE_ABI_VERSION || h->flags != 0) return SHUTTLE_ABI_E_FIELD;
  return SHUTTLE_ABI_OK;
}

static int CheckListener(const struct shuttle_abi_listener* l) {
  return (l->fd < 0 || l->flags != 0) ? SHUTTLE_ABI_E_FIELD : SHUTTLE_ABI_OK;
}

static int CheckInteractionFields(const struct shuttle_abi_interaction* ix) {
  if (ix->kind < 1 || ix->kind > SHUTTLE_ABI_KIND_MAX) return SHUTTLE_ABI_E_FIELD;
  if ((ix->flags & ~SHUTTLE_ABI_IX_FLAGS_ALL) != 0) return SHUTTLE_ABI_E_FIELD;
  return SHUTTLE_ABI_OK;
}

static int CheckVerdict(const struct shuttle_abi_verdict* v) {
  if (v->flags != 0) return SHUTTLE_ABI_E_FIELD;
  switch (v->verdict) {
    case SHUTTLE_ABI_VERDICT_ALLOW:
      return v->error == 0 ? SHUTTLE_ABI_OK : SHUTTLE_ABI_E_FIELD;
    case SHUTTLE_ABI_VERDICT_DENY:
      return v->error != 0 ? SHUTTLE_ABI_OK : SHUTTLE_ABI_E_FIELD;
    case SHUTTLE_ABI_VERDICT_REDIRECT:
      return SHUTTLE_ABI_OK;
    default:
      return SHUTTLE_ABI_E_FIELD;
  }
}

static int CheckAck(const struct shuttle_abi_ack* a) {
  return a->status < 0 ? SHUTTLE_ABI_E_FIELD : SHUTTLE_ABI_OK;
}

/* A wire string of `len` bytes (len >= 1) must end in its only NUL. */
static int WireStringOk(const unsigned char* p, size_t len) {
  if (len == 0 || p[len - 1] != '\0') return 0;
  return memchr(p, '\0', len - 1) == NULL;
}

int shuttle_abi_decode_header(const void* buf, size_t len, struct shuttle_abi_header* out) {
  if (buf == NULL || out == NULL) return SHUTTLE_ABI_E_ARG;
  if (len < SHUTTLE_ABI_HEADER_SIZE) return SHUTTLE_ABI_E_SHORT;
  const unsigned char* p = (const unsigned char*)buf;
  out->magic = Get32(p);
  out->version = Get16(p + 4);
  out->type = Get16(p + 6);
  out->length = Get32(p + 8);
  out->seq = Get32(p + 12);
  if (out->magic != SHUTTLE_ABI_MAGIC) return SHUTTLE_ABI_E_MAGIC;
  if (out->version != SHUTTLE_ABI_VERSION) return SHUTTLE_ABI_E_VERSION;
  if (out->type < 1 || out->type > SHUTTLE_ABI_TYPE_MAX) return SHUTTLE_ABI_E_TYPE;
  if (!LengthOk(out->type, out->length)) return SHUTTLE_ABI_E_LENGTH;
  return SHUTTLE_ABI_OK;
}

static int DecodeInteraction(const unsigned char* p, uint32_t length,
                             struct shuttle_abi_interaction* ix) {
  ix->kind = Get32(p);
  ix->pid = Get32(p + 4);
  ix->tid = Get32(p + 8);
  ix->target_pid = (int32_t)Get32(p + 12);
  ix->arg0 = Get32(p + 16);
  ix->arg1 = Get32(p + 20);
  ix->flags = Get32(p + 24);
  uint32_t name_len = Get16(p + 28);
  uint32_t target_len = Get16(p + 30);
  if (name_len < 1 || name_len > SHUTTLE_ABI_NAME_MAX || target_len < 1 ||
      target_len > SHUTTLE_ABI_TARGET_MAX) {
    return SHUTTLE_ABI_E_LENGTH;
  }
  if ((uint64_t)SHUTTLE_ABI_INTERACTION_FIXED_SIZE + name_len + target_len != length) {
    return SHUTTLE_ABI_E_LENGTH;
  }
  const unsigned char* name = p + SHUTTLE_ABI_INTERACTION_FIXED_SIZE;
  const unsigned char* target = name + name_len;
  if (!WireStringOk(name, name_len) || !WireStringOk(target, target_len)) {
    return SHUTTLE_ABI_E_STRING;
  }
  memcpy(ix->name, name, name_len);
  memcpy(ix->target, target, target_len);
  return CheckInteractionFields(ix);
}

int shuttle_abi_decode(const void* buf, size_t len, struct shuttle_abi_message* out,
                       size_t* consumed) {
  if (buf == NULL || out == NULL) return SHUTTLE_ABI_E_ARG;
  int rc = shuttle_abi_decode_header(buf, len, &out->header);
  if (rc != SHUTTLE_ABI_OK) return rc;
  /* The header bounds length by SHUTTLE_ABI_MAX_PAYLOAD, so this sum cannot overflow. */
  if (len - SHUTTLE_ABI_HEADER_SIZE < out->header.length) return SHUTTLE_ABI_E_SHORT;
  const unsigned char* p = (const unsigned char*)buf + SHUTTLE_ABI_HEADER_SIZE;
  switch (out->header.type) {
    case SHUTTLE_ABI_HELLO:
      out->u.hello.platform = Get16(p);
      out->u.hello.max_version = Get16(p + 2);
      out->u.hello.pid = Get32(p + 4);
      out->u.hello.flags = Get32(p + 8);
      rc = CheckHello(&out->u.hello);
      break;
    case SHUTTLE_ABI_LISTENER:
      out->u.listener.fd = (int32_t)Get32(p);
      out->u.listener.flags = Get32(p + 4);
      rc = CheckListener(&out->u.listener);
      break;
    case SHUTTLE_ABI_INTERACTION:
      rc = DecodeInteraction(p, out->header.length, &out->u.interaction);
      break;
    case SHUTTLE_ABI_VERDICT:
      out->u.verdict.seq_ref = Get32(p);
      out->u.verdict.verdict = Get32(p + 4);
      out->u.verdict.error = (int32_t)Get32(p + 8);
      out->u.verdict.flags = Get32(p + 12);
      rc = CheckVerdict(&out->u.verdict);
      break;
    case SHUTTLE_ABI_ACK:
      out->u.ack.seq_ref = Get32(p);
      out->u.ack.status = (int32_t)Get32(p + 4);
      rc = CheckAck(&out->u.ack);
      break;
    default:
      return SHUTTLE_ABI_E_TYPE; /* Unreachable: the header check rejects it. */
  }
  if (rc != SHUTTLE_ABI_OK) return rc;
  if (consumed != NULL) *consumed = SHUTTLE_ABI_HEADER_SIZE + out->header.length;
  return SHUTTLE_ABI_OK;
}

/* Length of a NUL-terminated string held in a fixed array of `cap` bytes, counting the NUL;
 * 0 if the array holds no NUL. */
static size_t BoundedLen(const char* s, size_t cap) {
  const char* nul = (const char*)memchr(s, '\0', cap);
  return nul == NULL ? 0 : (size_t)(nul - s) + 1;
}

int shuttle_abi_encode(const struct shuttle_abi_message* msg, void* buf, size_t cap,
                       size_t* written) {
  if (msg == NULL || buf == NULL || written == NULL) return SHUTTLE_ABI_E_ARG;
  uint32_t length = 0;
  size_t name_len = 0;
  size_t target_len = 0;
  int rc = SHUTTLE_ABI_OK;
  switch (msg->header.type) {
    case SHUTTLE_ABI_HELLO:
      length = SHUTTLE_ABI_HELLO_SIZE;
      rc = CheckHello(&msg->u.hello);
      break;
    case SHUTTLE_ABI_LISTENER:
      length = SHUTTLE_ABI_LISTENER_SIZE;
      rc = CheckListener(&msg->u.listener);
      break;
    case SHUTTLE_ABI_INTERACTION:
      name_len = BoundedLen(msg->u.interaction.name, SHUTTLE_ABI_NAME_MAX);
      target_len = BoundedLen(msg->u.interaction.target, SHUTTLE_ABI_TARGET_MAX);
      if (name_len == 0 || target_len == 0) return SHUTTLE_ABI_E_STRING;
      length = (uint32_t)(SHUTTLE_ABI_INTERACTION_FIXED_SIZE + name_len + target_len);
      rc = CheckInteractionFields(&msg->u.interaction);
      break;
    case SHUTTLE_ABI_VERDICT:
      length = SHUTTLE_ABI_VERDICT_SIZE;
      rc = CheckVerdict(&msg->u.verdict);
      break;
    case SHUTTLE_ABI_ACK:
      length = SHUTTLE_ABI_ACK_SIZE;
      rc = CheckAck(&msg->u.ack);
      break;
    default:
      return SHUTTLE_ABI_E_TYPE;
  }
  if (rc != SHUTTLE_ABI_OK) return rc;
  if (cap < SHUTTLE_ABI_HEADER_SIZE + (size_t)length) return SHUTTLE_ABI_E_ARG;

  unsigned char* p = (unsigned char*)buf;
  Put32(p, SHUTTLE_ABI_MAGIC);
  Put16(p + 4, SHUTTLE_ABI_VERSION);
  Put16(p + 6, msg->header.type);
  Put32(p + 8, length);
  Put32(p + 12, msg->header.seq);
  p += SHUTTLE_ABI_HEADER_SIZE;
  switch (msg->header.type) {
    case SHUTTLE_ABI_HELLO:
      Put16(p, msg->u.hello.platform);
      Put16(p + 2, msg->u.hello.max_version);
      Put32(p + 4, msg->u.hello.pid);
      Put32(p + 8, msg->u.hello.flags);
      break;
    case SHUTTLE_ABI_LISTENER:
      Put32(p, (uint32_t)msg->u.listener.fd);
      Put32(p + 4, msg->u.listener.flags);
      break;
    case SHUTTLE_ABI_INTERACTION: {
      const struct shuttle_abi_interaction* ix = &msg->u.interaction;
      Put32(p, ix->kind);
      Put32(p + 4, ix->pid);
      Put32(p + 8, ix->tid);
      Put32(p + 12, (uint32_t)ix->target_pid);
      Put32(p + 16, ix->arg0);
      Put32(p + 20, ix->arg1);
      Put32(p + 24, ix->flags);
      Put16(p + 28, (uint16_t)name_len);
      Put16(p + 30, (uint16_t)target_len);
      memcpy(p + SHUTTLE_ABI_INTERACTION_FIXED_SIZE, ix->name, name_len);
      memcpy(p + SHUTTLE_ABI_INTERACTION_FIXED_SIZE + name_len, ix->target, target_len);
      break;
    }
    case SHUTTLE_ABI_VERDICT:
      Put32(p, msg->u.verdict.seq_ref);
      Put32(p + 4, msg->u.verdict.verdict);
      Put32(p + 8, (uint32_t)msg->u.verdict.error);
      Put32(p + 12, msg->u.verdict.flags);
      break;
    case SHUTTLE_ABI_ACK:
      Put32(p, msg->u.ack.seq_ref);
      Put32(p + 4, (uint32_t)msg->u.ack.status);
      break;
    default:
      break;
  }
  *written = SHUTTLE_ABI_HEADER_SIZE + length;
  return SHUTTLE_ABI_OK;
}

const char* shuttle_abi_strerror(int code) {
  switch (code) {
    case SHUTTLE_ABI_OK:
      return "ok";
    case SHUTTLE_ABI_E_ARG:
      return "bad argument or output buffer too small";
    case SHUTTLE_ABI_E_SHORT:
      return "message truncated";
    case SHUTTLE_ABI_E_MAGIC:
      return "bad magic (not a Shuttle message)";
    case SHUTTLE_ABI_E_VERSION:
      return "unsupported wire version";
    case SHUTTLE_ABI_E_TYPE:
      return "unknown message type";
    case SHUTTLE_ABI_E_LENGTH:
      return "payload length wrong for the message type";
    case SHUTTLE_ABI_E_STRING:
      return "string not NUL-terminated, with an embedded NUL, or too long";
    case SHUTTLE_ABI_E_FIELD:
      return "field out of range";
    default:
      return "unknown error";
  }
}
