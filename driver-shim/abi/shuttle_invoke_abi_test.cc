// Unit tests of the invocation wire format: exact bytes, round trips, every truncation and
// corruption rejected with the right code, bounds, and random input never accepted wrongly.
#include "driver-shim/abi/shuttle_invoke_abi.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

using Bytes = std::vector<unsigned char>;

Bytes Request(const char* cwd, const std::vector<const char*>& argv,
              const std::vector<const char*>& envp) {
  Bytes out(shuttle_invoke_request_size(cwd, argv.size(), argv.data(), envp.size(), envp.data()));
  size_t written = 0;
  int rc = shuttle_invoke_encode_request(cwd, argv.size(), argv.data(), envp.size(), envp.data(),
                                         out.data(), out.size(), &written);
  EXPECT_EQ(rc, SHUTTLE_ABI_OK) << shuttle_abi_strerror(rc);
  EXPECT_EQ(written, out.size());
  return out;
}

// Decodes header + request payload of a whole message.
int DecodeRequest(const Bytes& b, shuttle_invoke_request* out) {
  shuttle_invoke_header h;
  int rc = shuttle_invoke_decode_header(b.data(), b.size(), &h);
  if (rc != SHUTTLE_ABI_OK) return rc;
  if (h.type != SHUTTLE_INVOKE_REQUEST) return SHUTTLE_ABI_E_TYPE;
  if (b.size() - SHUTTLE_INVOKE_HEADER_SIZE < h.length) return SHUTTLE_ABI_E_SHORT;
  return shuttle_invoke_decode_request(b.data() + SHUTTLE_INVOKE_HEADER_SIZE, h.length, out);
}

std::vector<std::string> Strings(const shuttle_invoke_request& r) {
  std::vector<std::string> out;
  const char* s = r.strings;
  for (uint32_t i = 0; i < 1 + r.argc + r.envc; ++i, s = shuttle_invoke_next_string(s)) {
    out.emplace_back(s);
  }
  return out;
}

TEST(ShuttleInvokeAbiTest, RequestExactBytesAndRoundTrip) {
  Bytes b = Request("/w", {"ls", "-l"}, {"A=1"});
  const unsigned char want[] = {'S', 'H', 'I', 'V', 1,   0,   1, 0,   25,  0,   0, 0,   0,
                                0,   0,   0,   2,   0,   0,   0, 1,   0,   0,   0, '/', 'w',
                                0,   'l', 's', 0,   '-', 'l', 0, 'A', '=', '1', 0};
  ASSERT_EQ(b.size(), sizeof(want));
  EXPECT_EQ(0, std::memcmp(b.data(), want, sizeof(want)));
  shuttle_invoke_request r;
  ASSERT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_OK);
  EXPECT_EQ(r.argc, 2u);
  EXPECT_EQ(r.envc, 1u);
  EXPECT_EQ(Strings(r), (std::vector<std::string>{"/w", "ls", "-l", "A=1"}));
}

TEST(ShuttleInvokeAbiTest, EmptyArgumentsAndNoEnvironment) {
  Bytes b = Request("/", {"prog", "", ""}, {});
  shuttle_invoke_request r;
  ASSERT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_OK);
  EXPECT_EQ(Strings(r), (std::vector<std::string>{"/", "prog", "", ""}));
}

TEST(ShuttleInvokeAbiTest, EncoderRejectsBadRequests) {
  unsigned char buf[256];
  size_t written = 0;
  const char* argv[] = {"x"};
  EXPECT_EQ(shuttle_invoke_encode_request("/", 0, argv, 0, nullptr, buf, sizeof(buf), &written),
            SHUTTLE_ABI_E_LENGTH);
  EXPECT_EQ(shuttle_invoke_encode_request("rel", 1, argv, 0, nullptr, buf, sizeof(buf), &written),
            SHUTTLE_ABI_E_FIELD);
  EXPECT_EQ(shuttle_invoke_encode_request("/", 1, argv, 0, nullptr, buf, 5, &written),
            SHUTTLE_ABI_E_ARG);
  const char* null_arg[] = {nullptr};
  EXPECT_EQ(shuttle_invoke_request_size("/", 1, null_arg, 0, nullptr), 0u);
  std::string huge(SHUTTLE_INVOKE_MAX_REQUEST, 'x');
  const char* big[] = {huge.c_str()};
  EXPECT_EQ(shuttle_invoke_request_size("/", 1, big, 0, nullptr), 0u);
}

TEST(ShuttleInvokeAbiTest, EveryTruncationIsRejected) {
  Bytes b = Request("/home", {"cat", "file"}, {"LANG=C"});
  for (size_t n = 0; n < b.size(); ++n) {
    shuttle_invoke_header h;
    int rc = shuttle_invoke_decode_header(b.data(), n, &h);
    if (n < SHUTTLE_INVOKE_HEADER_SIZE) {
      EXPECT_EQ(rc, SHUTTLE_ABI_E_SHORT) << n;
      continue;
    }
    ASSERT_EQ(rc, SHUTTLE_ABI_OK);
    // A payload cut short: a string loses its NUL, or the fixed part is incomplete.
    shuttle_invoke_request r;
    size_t payload = n - SHUTTLE_INVOKE_HEADER_SIZE;
    int decoded = shuttle_invoke_decode_request(b.data() + SHUTTLE_INVOKE_HEADER_SIZE, payload, &r);
    EXPECT_NE(decoded, SHUTTLE_ABI_OK) << n;
  }
}

TEST(ShuttleInvokeAbiTest, CorruptRequestsNameTheProblem) {
  Bytes good = Request("/", {"a", "b"}, {"E=1"});
  shuttle_invoke_request r;
  Bytes b = good;
  b[0] = 'X';
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_MAGIC);
  b = good;
  b[4] = 2;
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_VERSION);
  b = good;
  b[6] = 9;
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_TYPE);
  b = good;
  b[8] = 0xff, b[9] = 0xff, b[10] = 0xff;  // Length beyond the bound.
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_LENGTH);
  b = good;
  b[12] = 1;  // flags
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_FIELD);
  b = good;
  b[16] = 0;  // argc 0
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_FIELD);
  b = good;
  b[16] = 3;  // One string more than sent.
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_STRING);
  b = good;
  b[20] = 0;  // envc 0: one string too many.
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_STRING);
  b = good;
  b[24] = 'r';  // cwd not absolute.
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_FIELD);
  b = good;
  b.back() = 'x';  // The last string without its NUL.
  EXPECT_EQ(DecodeRequest(b, &r), SHUTTLE_ABI_E_STRING);
}

TEST(ShuttleInvokeAbiTest, SignalRoundTripAndRange) {
  unsigned char buf[32];
  size_t written = 0;
  ASSERT_EQ(shuttle_invoke_encode_signal(15, buf, sizeof(buf), &written), SHUTTLE_ABI_OK);
  ASSERT_EQ(written, SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_SIGNAL_SIZE);
  shuttle_invoke_header h;
  ASSERT_EQ(shuttle_invoke_decode_header(buf, written, &h), SHUTTLE_ABI_OK);
  EXPECT_EQ(h.type, SHUTTLE_INVOKE_SIGNAL);
  uint32_t signo = 0;
  ASSERT_EQ(shuttle_invoke_decode_signal(buf + SHUTTLE_INVOKE_HEADER_SIZE, h.length, &signo),
            SHUTTLE_ABI_OK);
  EXPECT_EQ(signo, 15u);
  EXPECT_EQ(shuttle_invoke_encode_signal(0, buf, sizeof(buf), &written), SHUTTLE_ABI_E_FIELD);
  EXPECT_EQ(shuttle_invoke_encode_signal(65, buf, sizeof(buf), &written), SHUTTLE_ABI_E_FIELD);
  buf[SHUTTLE_INVOKE_HEADER_SIZE] = 65;
  EXPECT_EQ(shuttle_invoke_decode_signal(buf + SHUTTLE_INVOKE_HEADER_SIZE, 4, &signo),
            SHUTTLE_ABI_E_FIELD);
  EXPECT_EQ(shuttle_invoke_decode_signal(buf + SHUTTLE_INVOKE_HEADER_SIZE, 3, &signo),
            SHUTTLE_ABI_E_LENGTH);
  buf[8] = 5;  // A SIGNAL header with the wrong length.
  EXPECT_EQ(shuttle_invoke_decode_header(buf, written, &h), SHUTTLE_ABI_E_LENGTH);
}

TEST(ShuttleInvokeAbiTest, ResultRoundTripOutcomesAndMessage) {
  unsigned char buf[1024];
  size_t written = 0;
  struct Case {
    uint32_t outcome;
    int32_t value;
    bool ok;
  };
  const Case cases[] = {
      {SHUTTLE_INVOKE_EXITED, 7, true},           {SHUTTLE_INVOKE_EXITED, 256, false},
      {SHUTTLE_INVOKE_EXITED, -1, false},         {SHUTTLE_INVOKE_SIGNALED, 15, true},
      {SHUTTLE_INVOKE_SIGNALED, 0, false},        {SHUTTLE_INVOKE_DENIED, 0, true},
      {SHUTTLE_INVOKE_DENIED, 1, false},          {SHUTTLE_INVOKE_FAILED, 2, true},
      {SHUTTLE_INVOKE_FAILED, 0, false},          {0, 0, false},
      {SHUTTLE_INVOKE_OUTCOME_MAX + 1, 0, false},
  };
  for (const Case& c : cases) {
    int rc = shuttle_invoke_encode_result(c.outcome, c.value, "why", buf, sizeof(buf), &written);
    ASSERT_EQ(rc == SHUTTLE_ABI_OK, c.ok) << c.outcome << " " << c.value;
    if (!c.ok) continue;
    shuttle_invoke_header h;
    ASSERT_EQ(shuttle_invoke_decode_header(buf, written, &h), SHUTTLE_ABI_OK);
    shuttle_invoke_result r;
    ASSERT_EQ(shuttle_invoke_decode_result(buf + SHUTTLE_INVOKE_HEADER_SIZE, h.length, &r),
              SHUTTLE_ABI_OK);
    EXPECT_EQ(r.outcome, c.outcome);
    EXPECT_EQ(r.value, c.value);
    EXPECT_STREQ(r.message, "why");
  }
  // A long message is cut to the bound, still terminated.
  std::string long_message(2000, 'm');
  ASSERT_EQ(shuttle_invoke_encode_result(SHUTTLE_INVOKE_DENIED, 0, long_message.c_str(), buf,
                                         sizeof(buf), &written),
            SHUTTLE_ABI_OK);
  shuttle_invoke_result r;
  ASSERT_EQ(shuttle_invoke_decode_result(buf + SHUTTLE_INVOKE_HEADER_SIZE,
                                         written - SHUTTLE_INVOKE_HEADER_SIZE, &r),
            SHUTTLE_ABI_OK);
  EXPECT_EQ(std::strlen(r.message), SHUTTLE_INVOKE_MESSAGE_MAX - 1);
  // An embedded NUL in the message, and a message length that disagrees with the payload.
  ASSERT_EQ(
      shuttle_invoke_encode_result(SHUTTLE_INVOKE_DENIED, 0, "abc", buf, sizeof(buf), &written),
      SHUTTLE_ABI_OK);
  unsigned char* payload = buf + SHUTTLE_INVOKE_HEADER_SIZE;
  size_t payload_len = written - SHUTTLE_INVOKE_HEADER_SIZE;
  payload[SHUTTLE_INVOKE_RESULT_FIXED_SIZE + 1] = '\0';
  EXPECT_EQ(shuttle_invoke_decode_result(payload, payload_len, &r), SHUTTLE_ABI_E_STRING);
  payload[8] = 9;
  EXPECT_EQ(shuttle_invoke_decode_result(payload, payload_len, &r), SHUTTLE_ABI_E_LENGTH);
}

TEST(ShuttleInvokeAbiTest, RandomBytesNeverDecodeWithoutTheirNuls) {
  std::mt19937 rng(12345);
  shuttle_invoke_request r;
  shuttle_invoke_result res;
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes b(SHUTTLE_INVOKE_REQUEST_FIXED_SIZE + 1 + rng() % 24);
    for (unsigned char& c : b) c = static_cast<unsigned char>(rng() % 3 == 0 ? 0 : rng());
    b[0] = b[1] = b[2] = b[3] = 0;  // flags
    b[4] = rng() % 3, b[5] = b[6] = b[7] = 0;
    b[8] = rng() % 3, b[9] = b[10] = b[11] = 0;
    b[12] = '/';  // An absolute cwd, so that the strings decide.
    if (shuttle_invoke_decode_request(b.data(), b.size(), &r) == SHUTTLE_ABI_OK) {
      ++accepted;
      // Whatever was accepted walks within the buffer and ends exactly at its end.
      const char* s = r.strings;
      for (uint32_t k = 0; k < 1 + r.argc + r.envc; ++k) s = shuttle_invoke_next_string(s);
      EXPECT_EQ(s, reinterpret_cast<const char*>(b.data()) + b.size());
    }
    (void)shuttle_invoke_decode_result(b.data(), b.size(), &res);
  }
  EXPECT_GT(accepted, 0);  // The generator does reach valid requests.
}

}  // namespace
