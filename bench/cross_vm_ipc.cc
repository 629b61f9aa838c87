// The issue 5 IPC benchmark: what crossing VMs through Shuttle costs an application, compared
// with staying in one VM and with a user-space relay. One binary, three roles:
//
//   serve PATH          a unix stream server: prints "READY PATH" once it listens, then serves
//                       one connection at a time until SIGTERM/SIGINT. A connection that opens
//                       with a header (magic, message size) is an echo session: every message
//                       of that size is written back; one closed without a header was a connect
//                       probe.
//   client PATH [-r REPS] [-s SMALL_COUNT] [-l LARGE_COUNT] [-c CONNECTS]
//                       per repetition: SMALL_COUNT round trips of 1 KiB messages and
//                       LARGE_COUNT of 1 MiB (each on one connection, timed after a warm-up
//                       message), and CONNECTS connect() calls (0: none; only the connect() is
//                       timed). Prints one line per measurement, the median over the
//                       repetitions: "tput_1KiB MiB/s", "tput_1MiB MiB/s", "connect ns/op".
//                       Defaults: -r 5 -s 5000 -l 200 -c 1000.
//                       Every echoed message is checked (its sequence number at both ends).
//   report FILE         reads lines "ROUND MODE OP VALUE" (MODE a: within one VM, b: across VMs
//                       through Shuttle, c: across VMs through a relay) and prints the medians,
//                       the median per-round ratios b/a and b/c with their spread, and the
//                       issue's targets (PASS/MISS): throughput b/a >= 0.95 and b/c >= 2,
//                       connect b/a < 3.
//
// scripts/bench.sh runs the server in VM db and the client in VMs db and web, interleaved
// rounds of (a), (b) and (c), then `report`. The client and server use libc sockets only.
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace shuttle::bench {
namespace {

constexpr uint32_t kMagic = 0x43504953;  // "SIPC"
constexpr size_t kSmall = 1024;
constexpr size_t kLarge = 1024 * 1024;

volatile sig_atomic_t g_stop = 0;
void OnStop(int) { g_stop = 1; }

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}

double NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Fills `addr` for `path`; INVALID_ARGUMENT if it does not fit in sun_path.
absl::Status UnixAddress(const std::string& path, sockaddr_un* addr) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "socket path '", path, "' is empty or longer than ", sizeof(addr->sun_path) - 1, " bytes"));
  }
  memcpy(addr->sun_path, path.data(), path.size());
  return absl::OkStatus();
}

// Reads or writes exactly `n` bytes (retrying short transfers and EINTR); false at EOF or on an
// error (errno set; 0 for EOF).
bool ReadAll(int fd, char* buf, size_t n) {
  while (n > 0) {
    ssize_t got = read(fd, buf, n);
    if (got == 0) {
      errno = 0;
      return false;
    }
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}
bool WriteAll(int fd, const char* buf, size_t n) {
  while (n > 0) {
    ssize_t put = write(fd, buf, n);
    if (put < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

// ----- serve -------------------------------------------------------------------------------------

// Serves one accepted connection: a connect probe (EOF before a header) or an echo session.
void ServeConnection(int fd, std::vector<char>& buf) {
  uint32_t header[2];
  if (!ReadAll(fd, reinterpret_cast<char*>(header), sizeof(header))) return;
  if (header[0] != kMagic || header[1] == 0 || header[1] > kLarge) {
    std::fprintf(stderr, "serve: bad header (magic %08x, size %u); connection dropped\n", header[0],
                 header[1]);
    return;
  }
  const size_t size = header[1];
  if (buf.size() < size) buf.resize(size);
  while (ReadAll(fd, buf.data(), size) && WriteAll(fd, buf.data(), size)) {
  }
}

absl::Status Serve(const std::string& path) {
  sockaddr_un addr;
  if (absl::Status s = UnixAddress(path, &addr); !s.ok()) return s;
  struct sigaction sa = {};
  sa.sa_handler = OnStop;  // No SA_RESTART: accept() returns EINTR and the loop ends.
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // A client that goes mid-message is its own problem.
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) return Errno("socket");
  unlink(path.c_str());  // A stale socket of an earlier run.
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno(absl::StrCat("bind ", path));
  }
  if (listen(listener, SOMAXCONN) != 0) return Errno(absl::StrCat("listen ", path));
  std::printf("READY %s\n", path.c_str());
  std::fflush(stdout);
  std::vector<char> buf(kLarge);
  uint64_t probes = 0, sessions = 0;
  while (g_stop == 0) {
    int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return Errno("accept");
    }
    uint32_t first = 0;
    // Peek: tell probes from sessions for the closing line only.
    ssize_t peeked = recv(fd, &first, sizeof(first), MSG_PEEK);
    (peeked > 0 ? sessions : probes)++;
    ServeConnection(fd, buf);
    close(fd);
  }
  close(listener);
  unlink(path.c_str());
  std::printf("STOPPED sessions=%llu probes=%llu\n", static_cast<unsigned long long>(sessions),
              static_cast<unsigned long long>(probes));
  return absl::OkStatus();
}

// ----- client ------------------------------------------------------------------------------------

absl::StatusOr<int> Connect(const sockaddr_un& addr) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    absl::Status s = Errno(absl::StrCat("connect ", addr.sun_path));
    close(fd);
    return s;
  }
  return fd;
}

// One echo session of `count` timed round trips of `size` bytes (after one untimed); MiB/s of
// payload moved (both directions). Each message carries its sequence number at both ends, and
// the echo must bring back the same.
absl::StatusOr<double> EchoSession(const sockaddr_un& addr, size_t size, int count) {
  absl::StatusOr<int> fd = Connect(addr);
  if (!fd.ok()) return fd.status();
  std::vector<char> out(size, 'x'), in(size);
  const uint32_t header[2] = {kMagic, static_cast<uint32_t>(size)};
  absl::Status status;
  double start = 0;
  for (int64_t i = -1; i < count && status.ok(); ++i) {  // i == -1: the warm-up message.
    if (i == 0) start = NowNs();
    memcpy(out.data(), &i, sizeof(i));
    memcpy(out.data() + size - sizeof(i), &i, sizeof(i));
    if ((i == -1 && !WriteAll(*fd, reinterpret_cast<const char*>(header), sizeof(header))) ||
        !WriteAll(*fd, out.data(), size)) {
      status = Errno("write");
    } else if (!ReadAll(*fd, in.data(), size)) {
      status = errno == 0 ? absl::DataLossError("the server closed the connection mid-session")
                          : Errno("read");
    } else if (memcmp(in.data(), out.data(), sizeof(i)) != 0 ||
               memcmp(in.data() + size - sizeof(i), out.data() + size - sizeof(i), sizeof(i)) !=
                   0) {
      status = absl::DataLossError(absl::StrCat("echo of message ", i, " differs"));
    }
  }
  const double elapsed_ns = NowNs() - start;
  close(*fd);
  if (!status.ok()) return status;
  return 2.0 * static_cast<double>(size) * count / (elapsed_ns / 1e9) / (1024.0 * 1024.0);
}

// `count` connect() calls, each on a fresh socket closed right after; ns per connect().
absl::StatusOr<double> ConnectLoop(const sockaddr_un& addr, int count) {
  double total_ns = 0;
  for (int i = 0; i < count; ++i) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket");
    const double t0 = NowNs();
    int rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    total_ns += NowNs() - t0;
    if (rc != 0) {
      absl::Status s = Errno(absl::StrCat("connect ", addr.sun_path, " (call ", i + 1, ")"));
      close(fd);
      return s;
    }
    close(fd);
  }
  return total_ns / count;
}

struct ClientOptions {
  std::string path;
  int reps = 5;
  int small_count = 5000;
  int large_count = 200;
  int connects = 1000;
};

absl::Status Client(const ClientOptions& o) {
  sockaddr_un addr;
  if (absl::Status s = UnixAddress(o.path, &addr); !s.ok()) return s;
  signal(SIGPIPE, SIG_IGN);
  std::vector<double> small, large, connects;
  for (int r = 0; r < o.reps; ++r) {
    if (o.small_count > 0) {
      absl::StatusOr<double> v = EchoSession(addr, kSmall, o.small_count);
      if (!v.ok()) return v.status();
      small.push_back(*v);
    }
    if (o.large_count > 0) {
      absl::StatusOr<double> v = EchoSession(addr, kLarge, o.large_count);
      if (!v.ok()) return v.status();
      large.push_back(*v);
    }
    if (o.connects > 0) {
      absl::StatusOr<double> v = ConnectLoop(addr, o.connects);
      if (!v.ok()) return v.status();
      connects.push_back(*v);
    }
  }
  if (!small.empty()) std::printf("tput_1KiB %.3f\n", Median(small));
  if (!large.empty()) std::printf("tput_1MiB %.3f\n", Median(large));
  if (!connects.empty()) std::printf("connect %.1f\n", Median(connects));
  return absl::OkStatus();
}

// ----- report ------------------------------------------------------------------------------------

// (mode, op) -> round -> value.
using Results = std::map<std::pair<std::string, std::string>, std::map<int, double>>;

absl::StatusOr<Results> ReadResults(const std::string& file) {
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file));
  Results out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.empty()) continue;
    int round = 0;
    double value = 0;
    if (f.size() != 4 || !absl::SimpleAtoi(f[0], &round) || !absl::SimpleAtod(f[3], &value) ||
        (f[1] != "a" && f[1] != "b" && f[1] != "c") || value <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ":", n, ": want 'ROUND a|b|c OP VALUE' with VALUE > 0, got '", line, "'"));
    }
    out[{std::string(f[1]), std::string(f[2])}][round] = value;
  }
  return out;
}

// Median and spread of the per-round ratios num/den over the rounds both have; false if none.
bool RoundRatios(const std::map<int, double>& num, const std::map<int, double>& den, double* med,
                 double* lo, double* hi) {
  std::vector<double> r;
  for (const auto& [round, v] : num) {
    auto it = den.find(round);
    if (it != den.end()) r.push_back(v / it->second);
  }
  if (r.empty()) return false;
  *med = Median(r);
  *lo = *std::min_element(r.begin(), r.end());
  *hi = *std::max_element(r.begin(), r.end());
  return true;
}

absl::Status Report(const std::string& file) {
  absl::StatusOr<Results> results = ReadResults(file);
  if (!results.ok()) return results.status();
  auto values = [&](const char* mode, const char* op) -> const std::map<int, double>& {
    static const std::map<int, double> kNone;
    auto it = results->find({mode, op});
    return it == results->end() ? kNone : it->second;
  };
  std::set<int> rounds;
  for (const auto& [key, by_round] : *results) {
    for (const auto& [round, value] : by_round) rounds.insert(round);
  }
  auto median_of = [](const std::map<int, double>& m) {
    std::vector<double> v;
    for (const auto& [round, x] : m) v.push_back(x);
    return Median(v);
  };
  struct Row {
    const char* op;
    const char* label;
    const char* unit;
    bool throughput;
  };
  const Row rows[] = {{"tput_1KiB", "1 KiB echo", "MiB/s", true},
                      {"tput_1MiB", "1 MiB echo", "MiB/s", true},
                      {"connect", "connect", "ns/op", false}};
  std::printf("%-11s %6s %12s %12s %12s   %-31s %-28s\n", "", "unit", "(a) one VM", "(b) Shuttle",
              "(c) relay", "b/a (spread) target", "b/c (spread) target");
  int missing = 0;
  for (const Row& row : rows) {
    const auto& a = values("a", row.op);
    const auto& b = values("b", row.op);
    const auto& c = values("c", row.op);
    if (a.empty() || b.empty()) {
      ++missing;
      std::printf("%-11s: no results for (a) or (b)\n", row.label);
      continue;
    }
    auto cell = [&](const std::map<int, double>& m) {
      return m.empty() ? std::string("-") : absl::StrFormat("%.1f", median_of(m));
    };
    double med = 0, lo = 0, hi = 0;
    std::string ba = "-", bc = "-";
    if (RoundRatios(b, a, &med, &lo, &hi)) {
      const bool pass = row.throughput ? med >= 0.95 : med < 3;
      ba = absl::StrFormat("%.3f (%.2f-%.2f) %s %s", med, lo, hi, row.throughput ? ">=0.95" : "<3",
                           pass ? "PASS" : "MISS");
    }
    if (row.throughput && RoundRatios(b, c, &med, &lo, &hi)) {
      bc = absl::StrFormat("%.2f (%.2f-%.2f) >=2 %s", med, lo, hi, med >= 2 ? "PASS" : "MISS");
    }
    std::printf("%-11s %6s %12s %12s %12s   %-31s %-28s\n", row.label, row.unit, cell(a).c_str(),
                cell(b).c_str(), cell(c).c_str(), ba.c_str(), bc.c_str());
  }
  std::printf(
      "rounds: %zu; ratios are the median of the per-round ratios (each round ran a, b, c\n"
      "back to back), the spread their range. A MISS is reported, not failed.\n",
      rounds.size());
  if (missing > 0) return absl::FailedPreconditionError("results for (a) or (b) are missing");
  return absl::OkStatus();
}

// ----- main --------------------------------------------------------------------------------------

int Usage() {
  std::fprintf(stderr,
               "usage: shuttle_bench_cross_vm_ipc serve PATH\n"
               "       shuttle_bench_cross_vm_ipc client PATH [-r REPS] [-s SMALL_COUNT] "
               "[-l LARGE_COUNT] [-c CONNECTS]\n"
               "       shuttle_bench_cross_vm_ipc report RESULTS_FILE\n");
  return 2;
}

// Parses the client's flags after PATH; INVALID_ARGUMENT naming the bad one.
absl::StatusOr<ClientOptions> ParseClient(int argc, char** argv) {
  ClientOptions o;
  o.path = argv[2];
  for (int i = 3; i < argc; i += 2) {
    const std::string flag = argv[i];
    int* target = flag == "-r"   ? &o.reps
                  : flag == "-s" ? &o.small_count
                  : flag == "-l" ? &o.large_count
                  : flag == "-c" ? &o.connects
                                 : nullptr;
    if (target == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    if (i + 1 >= argc || !absl::SimpleAtoi(argv[i + 1], target) || *target < 0) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " wants a count >= 0"));
    }
  }
  if (o.reps < 1) return absl::InvalidArgumentError("-r wants at least 1 repetition");
  return o;
}

int Main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string verb = argv[1];
  absl::Status status;
  if (verb == "serve" && argc == 3) {
    status = Serve(argv[2]);
  } else if (verb == "client") {
    absl::StatusOr<ClientOptions> options = ParseClient(argc, argv);
    status = options.ok() ? Client(*options) : options.status();
  } else if (verb == "report" && argc == 3) {
    status = Report(argv[2]);
  } else {
    return Usage();
  }
  if (!status.ok()) {
    std::fprintf(stderr, "shuttle_bench_cross_vm_ipc %s: %s\n", verb.c_str(),
                 std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace shuttle::bench

int main(int argc, char** argv) { return shuttle::bench::Main(argc, argv); }
