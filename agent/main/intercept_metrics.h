// Exposes the interception layer's own counters (relaxed atomics kept by the loop) on the
// agent's /metrics, read at scrape time so the hot path never touches prometheus.
#ifndef SHUTTLE_AGENT_MAIN_INTERCEPT_METRICS_H_
#define SHUTTLE_AGENT_MAIN_INTERCEPT_METRICS_H_

#include <string>
#include <utility>
#include <vector>

#include "agent/intercept/intercept_handler.h"
#include "agent/intercept/seccomp_source.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace shuttle::agent {

class InterceptMetrics final : public prometheus::Collectable {
 public:
  // Both are borrowed and must outlive every scrape (the agent unregisters by dropping this).
  InterceptMetrics(const intercept::InterceptStats& handler,
                   const intercept::SeccompSourceStats& source)
      : handler_(handler), source_(source) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    auto counter = [&out](const char* name, const char* help,
                          std::vector<std::pair<std::string, uint64_t>> by_outcome) {
      prometheus::MetricFamily family;
      family.name = name;
      family.help = help;
      family.type = prometheus::MetricType::Counter;
      for (auto& [outcome, value] : by_outcome) {
        prometheus::ClientMetric metric;
        metric.label.push_back({"outcome", outcome});
        metric.counter.value = static_cast<double>(value);
        family.metric.push_back(std::move(metric));
      }
      out.push_back(std::move(family));
    };
    auto load = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
    counter("shuttle_agent_notifications_total",
            "Intercepted syscalls handled by the agent, by outcome",
            {{"decided", load(handler_.decided)},
             {"deferred", load(handler_.deferred)},
             {"not_interaction", load(handler_.not_interaction)},
             {"malformed", load(handler_.malformed)},
             {"inspect_error", load(handler_.inspect_errors)},
             {"gone", load(handler_.gone)},
             {"vm_unknown", load(handler_.vm_unknown)},
             {"vm_mismatch", load(handler_.vm_mismatch)},
             {"vm_from_channel", load(handler_.vm_from_channel)}});
    counter("shuttle_agent_seccomp_events_total", "Seccomp notification channel events",
            {{"received", load(source_.received)},
             {"recv_error", load(source_.recv_errors)},
             {"send_gone", load(source_.send_gone)},
             {"send_error", load(source_.send_errors)},
             {"unjournaled", load(source_.unjournaled)},
             {"listener_added", load(source_.listeners_added)},
             {"listener_closed", load(source_.listeners_closed)},
             {"deferred", load(source_.deferred)},
             {"deferred_finished", load(source_.deferred_finished)},
             {"deferred_abandoned", load(source_.deferred_abandoned)}});
    return out;
  }

 private:
  const intercept::InterceptStats& handler_;
  const intercept::SeccompSourceStats& source_;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_MAIN_INTERCEPT_METRICS_H_
