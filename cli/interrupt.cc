#include "cli/interrupt.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace shuttle::cli {
namespace {

// The write end of the live instance's pipe, for the handler. -1 when none.
std::atomic<int> g_signal_fd{-1};

constexpr char kStop = 0;  // Written by the destructor: the watcher ends.

void OnSignal(int signal_number) {
  const int saved_errno = errno;
  const int fd = g_signal_fd.load();
  if (fd >= 0) {
    const char byte = static_cast<char>(signal_number);
    (void)!write(fd, &byte, 1);
  }
  errno = saved_errno;
}

}  // namespace

CancelOnInterrupt::CancelOnInterrupt(grpc::ClientContext* context) {
  if (pipe2(pipe_, O_CLOEXEC) != 0) return;  // Without a pipe, signals keep their default.
  g_signal_fd.store(pipe_[1]);
  watcher_ = std::thread([this, context] { Watch(context); });
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, &old_int_);
  sigaction(SIGTERM, &action, &old_term_);
}

CancelOnInterrupt::~CancelOnInterrupt() {
  if (!watcher_.joinable()) return;
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
  g_signal_fd.store(-1);
  const char stop = kStop;
  while (write(pipe_[1], &stop, 1) < 0 && errno == EINTR) {
  }
  watcher_.join();
  close(pipe_[0]);
  close(pipe_[1]);
}

void CancelOnInterrupt::Watch(grpc::ClientContext* context) {
  for (;;) {
    char byte = kStop;
    const ssize_t n = read(pipe_[0], &byte, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || byte == kStop) return;
    interrupted_.store(true);
    context->TryCancel();
  }
}

}  // namespace shuttle::cli
