#include "agent/broker/broker_target.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/broker/errors.h"
#include "agent/broker/proc_files.h"
#include "common/status_macros.h"

namespace shuttle::agent::broker {

absl::StatusOr<std::shared_ptr<const BrokerTarget>> BrokerTarget::ForVm(std::string vm_name,
                                                                        pid_t init_pid,
                                                                        UniqueFd init_pidfd) {
  if (vm_name.empty() || vm_name == kHostName) {
    return absl::InvalidArgumentError(
        absl::StrCat("broker target: bad VM name '", vm_name, "' (empty or the host's)"));
  }
  if (init_pid <= 0 || !init_pidfd) {
    return absl::InvalidArgumentError(absl::StrCat("broker target VM ", vm_name, ": init pid ",
                                                   init_pid, " or its pidfd is invalid"));
  }
  // /proc/self/fdinfo/N of a pidfd has "Pid:\tP" (-1 once the process has exited).
  SHUTTLE_ASSIGN_OR_RETURN(std::string info, broker_internal::ReadProcFile(absl::StrCat(
                                                 "/proc/self/fdinfo/", init_pidfd.get())));
  std::optional<absl::string_view> pid_text = broker_internal::FieldValue(info, "Pid");
  int pid = 0;
  if (!pid_text || !absl::SimpleAtoi(*pid_text, &pid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("broker target VM ", vm_name, ": fd ", init_pidfd.get(), " is not a pidfd"));
  }
  if (pid == -1) {
    return absl::UnavailableError(
        absl::StrCat("broker target VM ", vm_name, ": its init (pid ", init_pid, ") is gone"));
  }
  if (pid != init_pid) {
    return absl::InvalidArgumentError(absl::StrCat("broker target VM ", vm_name,
                                                   ": the pidfd refers to pid ", pid,
                                                   ", not to the init pid ", init_pid));
  }
  auto target = std::shared_ptr<const BrokerTarget>(
      new BrokerTarget(std::move(vm_name), /*is_host=*/false, init_pid, std::move(init_pidfd)));
  SHUTTLE_RETURN_IF_ERROR(target->CheckAlive());
  return target;
}

absl::StatusOr<std::shared_ptr<const BrokerTarget>> BrokerTarget::Host() {
  return std::shared_ptr<const BrokerTarget>(
      new BrokerTarget(kHostName, /*is_host=*/true, getpid(), UniqueFd()));
}

absl::Status BrokerTarget::CheckAlive() const {
  if (is_host_) return absl::OkStatus();
  // A pidfd turns readable when its process exits, zombie or reaped.
  pollfd p = {pidfd_.get(), POLLIN, 0};
  int n;
  do {
    n = poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError(errno, absl::StrCat("VM ", name_, ": polling its init's pidfd"));
  if (n > 0) return GoneError();
  return absl::OkStatus();
}

absl::Status BrokerTarget::GoneError() const {
  return absl::UnavailableError(
      absl::StrCat("VM ", name_, " is gone (its init, pid ", pid_, ", has exited)"));
}

absl::StatusOr<UniqueFd> BrokerTarget::OpenRoot() const {
  const std::string path = is_host_ ? "/" : absl::StrCat("/proc/", pid_, "/root");
  UniqueFd root(open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) {
    if (errno == ENOENT || errno == ESRCH) SHUTTLE_RETURN_IF_ERROR(CheckAlive());
    return ErrnoError(errno, absl::StrCat("VM ", name_, ": open root ", path));
  }
  // The pid named a live init when the pidfd said so now, hence also when /proc was opened.
  SHUTTLE_RETURN_IF_ERROR(CheckAlive());
  return root;
}

}  // namespace shuttle::agent::broker
