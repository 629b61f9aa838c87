// Test helper for deciders (header-only, tests only): builds the InterceptedCall that the
// notification loop would hand a Decider, so decider tests need no interception backend.
#ifndef SHUTTLE_AGENT_DECIDE_DECIDE_TESTING_H_
#define SHUTTLE_AGENT_DECIDE_DECIDE_TESTING_H_

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "agent/intercept/interception.h"

namespace shuttle::agent::testing {

// Has `decider` decide an interaction of `kind` from VM `vm` (pid: this process) on object
// `name` (cut to the decoder's buffer). `scope` null: the call can't be deferred.
inline intercept::Answer DecideCall(intercept::Decider& decider, std::string_view vm,
                                    v1::InteractionKind kind, std::string_view name,
                                    intercept::NotificationScope* scope = nullptr) {
  intercept::ObjectInfo object;
  object.kind = kind;
  object.name_len = std::min(name.size(), sizeof(object.name_buf));
  std::memcpy(object.name_buf, name.data(), object.name_len);
  intercept::SyscallEvent event;
  intercept::InterceptedCall call;
  call.subject_vm = vm;
  call.pid = getpid();
  call.event = &event;
  call.object = &object;
  call.deferral = scope;
  return decider.Decide(call);
}

}  // namespace shuttle::agent::testing

#endif  // SHUTTLE_AGENT_DECIDE_DECIDE_TESTING_H_
