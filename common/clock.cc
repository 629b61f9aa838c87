#include "common/clock.h"

namespace shuttle {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace

Clock& RealClock() {
  static SystemClock* const kClock = new SystemClock();
  return *kClock;
}

}  // namespace shuttle
