#include "agent/vm/vm_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace shuttle::agent {
namespace {

constexpr size_t kMaxStateFile = 1 << 20;

absl::Status Errno(int err, absl::string_view what) { return absl::ErrnoToStatus(err, what); }

template <typename T>
bool ParseNumber(absl::string_view text, T* out) {
  return absl::SimpleAtoi(text, out);
}

}  // namespace

std::string SerializeVmRecord(const VmRecord& record) {
  return absl::StrCat("# Shuttle VM state, written by shuttle-agent; do not edit.\n", "version 1\n",
                      "name ", record.name, "\n", "init_pid ", record.init_pid, "\n",
                      "init_start_time ", record.init_start_time, "\n", "ns_mnt ", record.ns.mnt,
                      "\n", "ns_net ", record.ns.net, "\n", "ns_ipc ", record.ns.ipc, "\n",
                      "ns_uts ", record.ns.uts, "\n", "ns_pid ", record.ns.pid, "\n",
                      "created_unix_ns ", absl::ToUnixNanos(record.created), "\n");
}

absl::StatusOr<VmRecord> ParseVmRecord(absl::string_view text) {
  VmRecord record;
  int64_t created_ns = 0;
  struct Field {
    const char* key;
    bool seen;
  };
  // Every field is required; unknown keys are errors so a newer format is not misread.
  std::vector<Field> fields = {{"version", false},         {"name", false},   {"init_pid", false},
                               {"init_start_time", false}, {"ns_mnt", false}, {"ns_net", false},
                               {"ns_ipc", false},          {"ns_uts", false}, {"ns_pid", false},
                               {"created_unix_ns", false}};
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits(' ', 1));
    absl::string_view key = kv.first;
    absl::string_view value = kv.second;
    bool ok = false;
    if (key == "version") {
      int version = 0;
      ok = ParseNumber(value, &version) && version == 1;
    } else if (key == "name") {
      record.name.assign(value.data(), value.size());
      ok = !value.empty();
    } else if (key == "init_pid") {
      ok = ParseNumber(value, &record.init_pid) && record.init_pid > 0;
    } else if (key == "init_start_time") {
      ok = ParseNumber(value, &record.init_start_time);
    } else if (key == "ns_mnt") {
      ok = ParseNumber(value, &record.ns.mnt);
    } else if (key == "ns_net") {
      ok = ParseNumber(value, &record.ns.net);
    } else if (key == "ns_ipc") {
      ok = ParseNumber(value, &record.ns.ipc);
    } else if (key == "ns_uts") {
      ok = ParseNumber(value, &record.ns.uts);
    } else if (key == "ns_pid") {
      ok = ParseNumber(value, &record.ns.pid);
    } else if (key == "created_unix_ns") {
      ok = ParseNumber(value, &created_ns);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": unknown key '", key, "'"));
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": bad value '", value, "' for ", key));
    }
    for (Field& f : fields) {
      if (key == f.key) f.seen = true;
    }
  }
  for (const Field& f : fields) {
    if (!f.seen) return absl::InvalidArgumentError(absl::StrCat("missing field ", f.key));
  }
  record.created = absl::FromUnixNanos(created_ns);
  return record;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view content) {
  const std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(errno, absl::StrCat("create ", tmp));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return Errno(err, absl::StrCat("write ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    int err = errno;
    close(fd);
    unlink(tmp.c_str());
    return Errno(err, absl::StrCat("fsync ", tmp));
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Errno(err, absl::StrCat("rename ", tmp, " to ", path));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string(".")
                          : slash == 0               ? std::string("/")
                                                     : path.substr(0, slash);
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(errno, absl::StrCat("open ", path));
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return Errno(err, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxStateFile) {
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, ": larger than ", kMaxStateFile));
    }
  }
  close(fd);
  return out;
}

}  // namespace shuttle::agent
