#include "driver-shim/abi/shuttle_abi.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "shuttle/v1/types.pb.h"

namespace {

namespace v1 = shuttle::v1;

static_assert(int{SHUTTLE_ABI_KIND_UNIX_CONNECT} == int{v1::UNIX_CONNECT});
static_assert(int{SHUTTLE_ABI_KIND_TCP_CONNECT} == int{v1::TCP_CONNECT});
static_assert(int{SHUTTLE_ABI_KIND_UDP_SEND} == int{v1::UDP_SEND});
static_assert(int{SHUTTLE_ABI_KIND_FIFO_OPEN} == int{v1::FIFO_OPEN});
static_assert(int{SHUTTLE_ABI_KIND_SHM_OPEN} == int{v1::SHM_OPEN});
static_assert(int{SHUTTLE_ABI_KIND_MQ_OPEN} == int{v1::MQ_OPEN});
static_assert(int{SHUTTLE_ABI_KIND_SYNC_OPEN} == int{v1::SYNC_OPEN});
static_assert(int{SHUTTLE_ABI_KIND_SIGNAL} == int{v1::SIGNAL});
static_assert(int{SHUTTLE_ABI_KIND_INVOKE} == int{v1::INVOKE});
static_assert(int{SHUTTLE_ABI_KIND_NAME_TRANSFER} == int{v1::NAME_TRANSFER});
static_assert(int{SHUTTLE_ABI_KIND_DEPEND} == int{v1::DEPEND});
static_assert(int{SHUTTLE_ABI_KIND_MAX} == int{v1::InteractionKind_MAX});
static_assert(int{SHUTTLE_ABI_VERDICT_ALLOW} == int{v1::VERDICT_ALLOW});
static_assert(int{SHUTTLE_ABI_VERDICT_DENY} == int{v1::VERDICT_DENY});
static_assert(int{SHUTTLE_ABI_VERDICT_REDIRECT} == int{v1::VERDICT_REDIRECT});

using Bytes = std::vector<unsigned char>;

Bytes Encode(const shuttle_abi_message& msg) {
  Bytes out(SHUTTLE_ABI_MAX_MESSAGE);
  size_t written = 0;
  int rc = shuttle_abi_encode(&msg, out.data(), out.size(), &written);
  EXPECT_EQ(rc, SHUTTLE_ABI_OK) << shuttle_abi_strerror(rc);
  out.resize(rc == SHUTTLE_ABI_OK ? written : 0);
  return out;
}

int Decode(const Bytes& bytes, shuttle_abi_message* out, size_t* consumed = nullptr) {
  return shuttle_abi_decode(bytes.data(), bytes.size(), out, consumed);
}

shuttle_abi_message Hello() {
  shuttle_abi_message m{};
  m.header.type = SHUTTLE_ABI_HELLO;
  m.header.seq = 7;
  m.u.hello.platform = SHUTTLE_ABI_PLATFORM_LINUX;
  m.u.hello.max_version = SHUTTLE_ABI_VERSION;
  m.u.hello.pid = 4242;
  return m;
}

shuttle_abi_message Interaction(const char* name, const char* target) {
  shuttle_abi_message m{};
  m.header.type = SHUTTLE_ABI_INTERACTION;
  m.header.seq = 99;
  m.u.interaction.kind = SHUTTLE_ABI_KIND_SIGNAL;
  m.u.interaction.pid = 10;
  m.u.interaction.tid = 11;
  m.u.interaction.target_pid = -12;
  m.u.interaction.arg0 = 15;
  m.u.interaction.arg1 = 0xdeadbeef;
  m.u.interaction.flags = SHUTTLE_ABI_IX_CREATE;
  std::strncpy(m.u.interaction.name, name, SHUTTLE_ABI_NAME_MAX - 1);
  std::strncpy(m.u.interaction.target, target, SHUTTLE_ABI_TARGET_MAX - 1);
  return m;
}

void Put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = v & 0xff;
  b[at + 1] = v >> 8;
}
void Put32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = (v >> (8 * i)) & 0xff;
}

TEST(ShuttleAbiTest, HelloRoundTripAndExactBytes) {
  Bytes b = Encode(Hello());
  ASSERT_EQ(b.size(), SHUTTLE_ABI_HEADER_SIZE + SHUTTLE_ABI_HELLO_SIZE);
  // Little-endian, field by field: "SHTL", version 1, type 1, length 12, seq 7.
  const unsigned char want_header[] = {'S', 'H', 'T', 'L', 1, 0, 1, 0, 12, 0, 0, 0, 7, 0, 0, 0};
  EXPECT_EQ(0, std::memcmp(b.data(), want_header, sizeof(want_header)));
  shuttle_abi_message m;
  size_t consumed = 0;
  ASSERT_EQ(Decode(b, &m, &consumed), SHUTTLE_ABI_OK);
  EXPECT_EQ(consumed, b.size());
  EXPECT_EQ(m.header.magic, SHUTTLE_ABI_MAGIC);
  EXPECT_EQ(m.header.type, SHUTTLE_ABI_HELLO);
  EXPECT_EQ(m.header.seq, 7u);
  EXPECT_EQ(m.u.hello.platform, SHUTTLE_ABI_PLATFORM_LINUX);
  EXPECT_EQ(m.u.hello.pid, 4242u);
}

TEST(ShuttleAbiTest, ListenerVerdictAckRoundTrip) {
  shuttle_abi_message l{};
  l.header.type = SHUTTLE_ABI_LISTENER;
  l.u.listener.fd = 5;
  shuttle_abi_message v{};
  v.header.type = SHUTTLE_ABI_VERDICT;
  v.u.verdict = {.seq_ref = 3, .verdict = SHUTTLE_ABI_VERDICT_DENY, .error = 13, .flags = 0};
  shuttle_abi_message a{};
  a.header.type = SHUTTLE_ABI_ACK;
  a.u.ack = {.seq_ref = 8, .status = 0};

  shuttle_abi_message m;
  ASSERT_EQ(Decode(Encode(l), &m), SHUTTLE_ABI_OK);
  EXPECT_EQ(m.u.listener.fd, 5);
  ASSERT_EQ(Decode(Encode(v), &m), SHUTTLE_ABI_OK);
  EXPECT_EQ(m.u.verdict.seq_ref, 3u);
  EXPECT_EQ(m.u.verdict.verdict, static_cast<uint32_t>(SHUTTLE_ABI_VERDICT_DENY));
  EXPECT_EQ(m.u.verdict.error, 13);
  ASSERT_EQ(Decode(Encode(a), &m), SHUTTLE_ABI_OK);
  EXPECT_EQ(m.u.ack.seq_ref, 8u);
}

TEST(ShuttleAbiTest, InteractionRoundTrip) {
  Bytes b = Encode(Interaction("\\\\.\\pipe\\db", "C:\\app.exe"));
  ASSERT_EQ(b.size(), SHUTTLE_ABI_HEADER_SIZE + SHUTTLE_ABI_INTERACTION_FIXED_SIZE + 12 + 11);
  shuttle_abi_message m;
  ASSERT_EQ(Decode(b, &m), SHUTTLE_ABI_OK);
  EXPECT_STREQ(m.u.interaction.name, "\\\\.\\pipe\\db");
  EXPECT_STREQ(m.u.interaction.target, "C:\\app.exe");
  EXPECT_EQ(m.u.interaction.kind, static_cast<uint32_t>(SHUTTLE_ABI_KIND_SIGNAL));
  EXPECT_EQ(m.u.interaction.target_pid, -12);
  EXPECT_EQ(m.u.interaction.arg1, 0xdeadbeefu);
  EXPECT_EQ(m.u.interaction.flags, SHUTTLE_ABI_IX_CREATE);
}

TEST(ShuttleAbiTest, InteractionWithEmptyAndMaximalStrings) {
  std::string longest(SHUTTLE_ABI_NAME_MAX - 1, 'x');
  shuttle_abi_message m;
  Bytes b = Encode(Interaction(longest.c_str(), ""));
  ASSERT_EQ(b.size(), SHUTTLE_ABI_HEADER_SIZE + SHUTTLE_ABI_INTERACTION_FIXED_SIZE +
                          SHUTTLE_ABI_NAME_MAX + 1);
  ASSERT_EQ(Decode(b, &m), SHUTTLE_ABI_OK);
  EXPECT_EQ(std::string(m.u.interaction.name), longest);
  EXPECT_STREQ(m.u.interaction.target, "");
}

TEST(ShuttleAbiTest, TrailingBytesAreNotConsumed) {
  Bytes b = Encode(Hello());
  size_t one = b.size();
  Bytes two = b;
  two.insert(two.end(), b.begin(), b.end());
  shuttle_abi_message m;
  size_t consumed = 0;
  ASSERT_EQ(Decode(two, &m, &consumed), SHUTTLE_ABI_OK);
  EXPECT_EQ(consumed, one);
}

TEST(ShuttleAbiTest, EveryTruncationIsShort) {
  for (const shuttle_abi_message& msg : {Hello(), Interaction("/q", "")}) {
    Bytes b = Encode(msg);
    for (size_t n = 0; n < b.size(); ++n) {
      shuttle_abi_message m;
      EXPECT_EQ(shuttle_abi_decode(b.data(), n, &m, nullptr), SHUTTLE_ABI_E_SHORT) << n;
    }
  }
}

TEST(ShuttleAbiTest, BadHeaderFields) {
  shuttle_abi_message m;
  Bytes b = Encode(Hello());
  Bytes bad = b;
  bad[0] = 'X';
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_MAGIC);
  bad = b;
  Put16(bad, 4, 2);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_VERSION);
  bad = b;
  Put16(bad, 4, 0);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_VERSION);
  for (uint16_t type : {0, 6, 0xffff}) {
    bad = b;
    Put16(bad, 6, type);
    EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_TYPE) << type;
  }
  // Fixed-size types must carry exactly their size.
  for (uint32_t length : {0u, 11u, 13u, 0xffffffffu}) {
    bad = b;
    Put32(bad, 8, length);
    bad.resize(SHUTTLE_ABI_MAX_MESSAGE, 0);
    EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH) << length;
  }
  // A header that claims another fixed type's size.
  bad = b;
  Put16(bad, 6, SHUTTLE_ABI_ACK);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH);
}

TEST(ShuttleAbiTest, OversizedInteractionLengthRejectedBeforeReading) {
  Bytes b = Encode(Interaction("/q", ""));
  Put32(b, 8, SHUTTLE_ABI_MAX_PAYLOAD + 1);
  shuttle_abi_header h;
  EXPECT_EQ(shuttle_abi_decode_header(b.data(), b.size(), &h), SHUTTLE_ABI_E_LENGTH);
  shuttle_abi_message m;
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_LENGTH);
}

TEST(ShuttleAbiTest, InteractionStringLengthsMustAddUp) {
  Bytes b = Encode(Interaction("/q", "t"));  // name_len 3, target_len 2.
  const size_t kNameLen = SHUTTLE_ABI_HEADER_SIZE + 28;
  const size_t kTargetLen = SHUTTLE_ABI_HEADER_SIZE + 30;
  shuttle_abi_message m;
  Bytes bad = b;
  Put16(bad, kNameLen, 4);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH);
  bad = b;
  Put16(bad, kNameLen, 0);
  Put16(bad, kTargetLen, 5);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH);
  bad = b;
  Put16(bad, kTargetLen, 0);
  Put16(bad, kNameLen, 5);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH);
  bad = b;
  Put16(bad, kNameLen, SHUTTLE_ABI_NAME_MAX + 1);
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_LENGTH);
}

TEST(ShuttleAbiTest, InteractionStringsMustBeTerminatedWithoutEmbeddedNul) {
  Bytes b = Encode(Interaction("/q", "t"));
  const size_t kName = SHUTTLE_ABI_HEADER_SIZE + SHUTTLE_ABI_INTERACTION_FIXED_SIZE;
  shuttle_abi_message m;
  Bytes bad = b;
  bad[kName + 2] = 'x';  // Name's NUL replaced.
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_STRING);
  bad = b;
  bad[kName + 1] = '\0';  // "/\0\0".
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_STRING);
  bad = b;
  bad[kName + 4] = 'x';  // Target's NUL replaced.
  EXPECT_EQ(Decode(bad, &m), SHUTTLE_ABI_E_STRING);
}

TEST(ShuttleAbiTest, FieldRanges) {
  shuttle_abi_message m;
  for (uint32_t kind : {0u, SHUTTLE_ABI_KIND_MAX + 1}) {
    Bytes b = Encode(Interaction("/q", ""));
    Put32(b, SHUTTLE_ABI_HEADER_SIZE, kind);
    EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD) << kind;
  }
  Bytes b = Encode(Interaction("/q", ""));
  Put32(b, SHUTTLE_ABI_HEADER_SIZE + 24, 0x80);
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);

  b = Encode(Hello());
  Put16(b, SHUTTLE_ABI_HEADER_SIZE, 3);  // Platform.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);
  b = Encode(Hello());
  Put16(b, SHUTTLE_ABI_HEADER_SIZE + 2, 0);  // max_version below the header's.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);

  shuttle_abi_message l{};
  l.header.type = SHUTTLE_ABI_LISTENER;
  l.u.listener.fd = 3;
  b = Encode(l);
  Put32(b, SHUTTLE_ABI_HEADER_SIZE, 0xffffffffu);  // fd -1.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);

  shuttle_abi_message v{};
  v.header.type = SHUTTLE_ABI_VERDICT;
  v.u.verdict.verdict = SHUTTLE_ABI_VERDICT_ALLOW;
  b = Encode(v);
  Put32(b, SHUTTLE_ABI_HEADER_SIZE + 8, 13);  // ALLOW with an error.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);
  b = Encode(v);
  Put32(b, SHUTTLE_ABI_HEADER_SIZE + 4, SHUTTLE_ABI_VERDICT_DENY);  // DENY without one.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);
  b = Encode(v);
  Put32(b, SHUTTLE_ABI_HEADER_SIZE + 4, 9);
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);

  shuttle_abi_message a{};
  a.header.type = SHUTTLE_ABI_ACK;
  b = Encode(a);
  Put32(b, SHUTTLE_ABI_HEADER_SIZE + 4, 0xffffffffu);  // Negative status.
  EXPECT_EQ(Decode(b, &m), SHUTTLE_ABI_E_FIELD);
}

TEST(ShuttleAbiTest, EncodeValidatesToo) {
  unsigned char buf[SHUTTLE_ABI_MAX_MESSAGE];
  size_t written = 0;
  shuttle_abi_message m = Interaction("/q", "");
  std::memset(m.u.interaction.name, 'a', SHUTTLE_ABI_NAME_MAX);  // No NUL anywhere.
  EXPECT_EQ(shuttle_abi_encode(&m, buf, sizeof(buf), &written), SHUTTLE_ABI_E_STRING);
  m = Interaction("/q", "");
  m.u.interaction.kind = 0;
  EXPECT_EQ(shuttle_abi_encode(&m, buf, sizeof(buf), &written), SHUTTLE_ABI_E_FIELD);
  m = Hello();
  m.header.type = 42;
  EXPECT_EQ(shuttle_abi_encode(&m, buf, sizeof(buf), &written), SHUTTLE_ABI_E_TYPE);
  m = Hello();
  EXPECT_EQ(shuttle_abi_encode(&m, buf, SHUTTLE_ABI_HEADER_SIZE + 11, &written), SHUTTLE_ABI_E_ARG);
  EXPECT_EQ(shuttle_abi_encode(nullptr, buf, sizeof(buf), &written), SHUTTLE_ABI_E_ARG);
  EXPECT_EQ(shuttle_abi_decode(nullptr, 0, &m, nullptr), SHUTTLE_ABI_E_ARG);
}

TEST(ShuttleAbiTest, RandomInputNeverCrashesAndValidOnlyWhenWellFormed) {
  std::mt19937 rng(1234);
  Bytes base = Encode(Interaction("/queue", "prog"));
  shuttle_abi_message m;
  int ok = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes b = base;
    // Flip a few random bytes, and sometimes cut the message.
    for (int k = 0; k < 3; ++k) b[rng() % b.size()] = rng() & 0xff;
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    size_t consumed = 0;
    int rc = Decode(b, &m, &consumed);
    if (rc == SHUTTLE_ABI_OK) {
      ++ok;
      ASSERT_LE(consumed, b.size());
      ASSERT_LT(std::strlen(m.u.interaction.name), SHUTTLE_ABI_NAME_MAX);
      // A message that decodes re-encodes to the same bytes.
      Bytes again = Encode(m);
      ASSERT_EQ(again, Bytes(b.begin(), b.begin() + consumed));
    } else {
      ASSERT_LT(rc, 0);
      ASSERT_NE(std::string(shuttle_abi_strerror(rc)), "unknown error");
    }
  }
  EXPECT_GT(ok, 0);  // Flips in the pid/arg fields keep the message valid.
}

}  // namespace
