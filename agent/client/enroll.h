// Agent enrollment: the one-time exchange of a join token and a CSR for a client certificate
// that names this host (AgentService.Enroll), and the agent's credentials in its data directory
// from then on (DESIGN.md section 2, "security").
//
//   DATA_DIR/pki/agent.key   the agent's private key (0600, never leaves the host)
//   DATA_DIR/pki/agent.pem   its certificate, CN = host id, signed by the controller's CA
//   DATA_DIR/pki/ca.pem      the controller's CA, the only root the agent trusts afterwards
#ifndef SHUTTLE_AGENT_CLIENT_ENROLL_H_
#define SHUTTLE_AGENT_CLIENT_ENROLL_H_

#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shuttle::agent {

// Where an agent's credentials live under its data directory.
struct AgentPkiPaths {
  std::string dir;   // DATA_DIR/pki
  std::string cert;  // agent.pem
  std::string key;   // agent.key
  std::string ca;    // ca.pem
};
AgentPkiPaths AgentPki(const std::string& data_dir);

// True iff all three files exist.
bool HasAgentCredentials(const AgentPkiPaths& paths);

struct EnrollOptions {
  std::string controller_address;  // "HOST:PORT"
  std::string join_token;
  std::string host_id;
  // How to reach the controller without a client certificate: normally
  // tls::LoadClientCredentials(controller_ca, "", ""); tests may pass insecure credentials.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  absl::Duration timeout = absl::Seconds(30);
};

// Creates a key and CSR (CN = host id), calls Enroll, checks the answer (the certificate chains
// to the returned CA, is good for client auth and names `host_id`), and writes key, certificate
// and CA into `paths` (directory created 0700; each file written atomically, the CA last, so
// HasAgentCredentials is true only after a complete enrollment). Errors are one line, starting
// "enrollment with controller ADDR failed: " and carrying the controller's reason.
// Thread-compatible (writes files).
absl::Status Enroll(const EnrollOptions& options, const AgentPkiPaths& paths);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_CLIENT_ENROLL_H_
