// Minimal leveled logging to stderr (Abseil 20220623 has no absl/log). One line per message,
// prefixed with UTC time, level and component, so daemon logs read well under journald.
//   SHUTTLE_LOG(INFO) << "listening on " << addr;
#ifndef SHUTTLE_COMMON_LOGGING_H_
#define SHUTTLE_COMMON_LOGGING_H_

#include <sstream>
#include <string_view>

namespace shuttle {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Messages below this level are dropped. Thread-safe; default kInfo.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

// Collects one message and writes it atomically on destruction; kFatal aborts after writing.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace shuttle

#define SHUTTLE_LOG_LEVEL_DEBUG ::shuttle::LogLevel::kDebug
#define SHUTTLE_LOG_LEVEL_INFO ::shuttle::LogLevel::kInfo
#define SHUTTLE_LOG_LEVEL_WARNING ::shuttle::LogLevel::kWarning
#define SHUTTLE_LOG_LEVEL_ERROR ::shuttle::LogLevel::kError
#define SHUTTLE_LOG_LEVEL_FATAL ::shuttle::LogLevel::kFatal

#define SHUTTLE_LOG(level)                                    \
  if (SHUTTLE_LOG_LEVEL_##level < ::shuttle::MinLogLevel()) { \
  } else                                                      \
    ::shuttle::LogMessage(SHUTTLE_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

// Crashes loudly on a broken invariant (STYLE.md: "A broken invariant may crash loudly").
#define SHUTTLE_CHECK(cond) \
  if (cond) {               \
  } else                    \
    SHUTTLE_LOG(FATAL) << "check failed: " #cond " "

#endif  // SHUTTLE_COMMON_LOGGING_H_
