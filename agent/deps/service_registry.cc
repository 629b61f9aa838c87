#include "agent/deps/service_registry.h"

#include "absl/strings/str_cat.h"
#include "agent/deps/service_spec.h"
#include "agent/vm/vm_state.h"
#include "google/protobuf/util/json_util.h"

namespace shuttle::agent::deps {

const char* PhaseName(ServiceRunState::Phase phase) {
  switch (phase) {
    case ServiceRunState::Phase::kStopped:
      return "stopped";
    case ServiceRunState::Phase::kStarting:
      return "starting";
    case ServiceRunState::Phase::kRunning:
      return "running";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<ServiceRegistry>> ServiceRegistry::Open(std::string path) {
  std::unique_ptr<ServiceRegistry> registry(new ServiceRegistry(std::move(path)));
  absl::StatusOr<std::string> text = ReadSmallFile(registry->path_);
  if (absl::IsNotFound(text.status())) return registry;
  if (!text.ok()) return text.status();
  v1::LocalServiceSet set;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto parsed = google::protobuf::util::JsonStringToMessage(*text, &set, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(registry->path_, ": not a service list (", parsed.ToString(), ")"));
  }
  absl::MutexLock lock(&registry->mu_);
  for (int i = 0; i < set.services_size(); ++i) {
    absl::StatusOr<v1::LocalService> service = NormalizeService(set.services(i));
    if (!service.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(registry->path_, ": service ", i + 1, " (",
                                                     ServiceLabel(set.services(i)),
                                                     "): ", service.status().message()));
    }
    Key key{service->vm(), service->name()};
    if (!registry->services_.emplace(key, *std::move(service)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(registry->path_, ": service ", key.first, "/", key.second, " twice"));
    }
  }
  return registry;
}

absl::StatusOr<v1::LocalService> ServiceRegistry::Add(v1::LocalService service) {
  absl::StatusOr<v1::LocalService> normalized = NormalizeService(std::move(service));
  if (!normalized.ok()) return normalized.status();
  Key key{normalized->vm(), normalized->name()};
  absl::MutexLock lock(&mu_);
  if (services_.count(key) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("vm ", key.first, " already has a service named ",
                                                 key.second, " (remove it first)"));
  }
  for (const auto& [other_key, other] : services_) {
    if (other_key.first == key.first && other.ready() == normalized->ready()) {
      return absl::AlreadyExistsError(
          absl::StrCat("service ", ServiceLabel(other), " already is ready at ", other.ready()));
    }
  }
  std::map<Key, v1::LocalService> next = services_;
  next.emplace(key, *normalized);
  absl::Status persisted = Persist(next);
  if (!persisted.ok()) return persisted;
  services_ = std::move(next);
  return normalized;
}

absl::Status ServiceRegistry::Remove(const std::string& vm, const std::string& name) {
  absl::MutexLock lock(&mu_);
  std::map<Key, v1::LocalService> next = services_;
  if (next.erase(Key{vm, name}) == 0) {
    return absl::NotFoundError(absl::StrCat("vm ", vm, " has no service named ", name));
  }
  absl::Status persisted = Persist(next);
  if (!persisted.ok()) return persisted;
  services_ = std::move(next);
  return absl::OkStatus();
}

std::vector<v1::LocalService> ServiceRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::LocalService> out;
  out.reserve(services_.size());
  for (const auto& [key, service] : services_) out.push_back(service);
  return out;
}

std::optional<v1::LocalService> ServiceRegistry::FindServing(
    const std::string& vm, const broker::BrokerRequest& request) const {
  absl::MutexLock lock(&mu_);
  for (auto it = services_.lower_bound(Key{vm, ""}); it != services_.end() && it->first.first == vm;
       ++it) {
    // Stored services were normalized, so their address parses.
    absl::StatusOr<ReadyAddress> ready = ReadyAddress::Parse(it->second.ready());
    if (ready.ok() && ready->Serves(request)) return it->second;
  }
  return std::nullopt;
}

void ServiceRegistry::SetRunState(const std::string& vm, const std::string& name,
                                  ServiceRunState state) {
  absl::MutexLock lock(&mu_);
  run_states_[Key{vm, name}] = std::move(state);
}

ServiceRunState ServiceRegistry::RunStateOf(const std::string& vm, const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = run_states_.find(Key{vm, name});
  return it == run_states_.end() ? ServiceRunState{} : it->second;
}

absl::Status ServiceRegistry::Persist(const std::map<Key, v1::LocalService>& services) const {
  v1::LocalServiceSet set;
  for (const auto& [key, service] : services) *set.add_services() = service;
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  auto printed = google::protobuf::util::MessageToJsonString(set, &json, options);
  if (!printed.ok()) {
    return absl::InternalError(absl::StrCat("encoding services: ", printed.ToString()));
  }
  absl::Status written = WriteFileAtomically(path_, json);
  if (!written.ok()) {
    return absl::Status(written.code(),
                        absl::StrCat("saving services to ", path_, ": ", written.message()));
  }
  return absl::OkStatus();
}

}  // namespace shuttle::agent::deps
