// Where the agent's decider hands each decision worth auditing (every cross-VM, vm-host and
// host-vm decision; intra-VM calls are not audited, DESIGN.md section 1). The spool in
// agent/audit/ implements it; tests use a recording fake.
#ifndef SHUTTLE_AGENT_AUDIT_AUDIT_SINK_H_
#define SHUTTLE_AGENT_AUDIT_AUDIT_SINK_H_

#include "shuttle/v1/types.pb.h"

namespace shuttle::agent {

class AuditSink {
 public:
  virtual ~AuditSink() = default;
  // Takes one record: time, interaction, decision and latency filled in by the caller; the sink
  // assigns the idempotent id ("<host>/<boot>/<seq>") and host_id. Called on the notification
  // loop thread and on the thread that completes `ask` answers: never blocks and does no I/O
  // (a full buffer drops the record and counts the drop).
  virtual void Submit(v1::AuditRecord record) = 0;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_AUDIT_AUDIT_SINK_H_
