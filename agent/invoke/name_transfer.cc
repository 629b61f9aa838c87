#include "agent/invoke/name_transfer.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/intercept/unique_fd.h"
#include "common/logging.h"

namespace shuttle::agent::invoke {

std::optional<std::string> AbsoluteName(const std::string& cwd, const std::string& value) {
  if (value.empty() || value.find('\0') != std::string::npos || value.size() >= PATH_MAX) {
    return std::nullopt;
  }
  std::string joined = value.front() == '/' ? value : absl::StrCat(cwd, "/", value);
  std::vector<absl::string_view> parts;
  for (absl::string_view part : absl::StrSplit(joined, '/', absl::SkipEmpty())) {
    if (part != ".") parts.push_back(part);
  }
  std::string out = absl::StrCat("/", absl::StrJoin(parts, "/"));
  if (out.size() >= PATH_MAX) return std::nullopt;
  return out;
}

std::string LeafName(const std::string& absolute) {
  size_t slash = absolute.rfind('/');
  std::string leaf = slash == std::string::npos ? absolute : absolute.substr(slash + 1);
  return (leaf.empty() || leaf == "..") ? "root" : leaf;
}

NameTransfer::NameTransfer(VmMounter& mounter, std::string caller_vm, std::string target_vm,
                           std::string target_dir)
    : mounter_(mounter),
      caller_vm_(std::move(caller_vm)),
      target_vm_(std::move(target_vm)),
      target_dir_(std::move(target_dir)) {}

NameTransfer::~NameTransfer() {
  for (const Transferred& t : transferred_) {
    absl::Status removed = mounter_.Unbind(target_vm_, t.target_path);
    if (!removed.ok()) {
      SHUTTLE_LOG(WARNING) << "invoke: VM " << target_vm_ << ": removing the transferred "
                           << t.target_path << " failed: " << removed;
    }
  }
}

absl::StatusOr<int> NameTransfer::OpenEligible(const std::string& absolute) const {
  absl::StatusOr<int> fd = mounter_.OpenInVm(caller_vm_, absolute, O_PATH);
  if (!fd.ok()) return fd.status();
  intercept::UniqueFd owned(*fd);
  struct stat st {};
  if (::fstat(owned.get(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("fstat ", absolute, " in VM ", caller_vm_));
  }
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(absolute, " in VM ", caller_vm_,
                     " is not a regular file or directory; only those are handed over"));
  }
  if (S_ISDIR(st.st_mode)) {
    // "/" (or a name that leads there) would hand over the caller's whole file system.
    absl::StatusOr<int> root = mounter_.OpenInVm(caller_vm_, "/", O_PATH);
    if (!root.ok()) return root.status();
    intercept::UniqueFd root_fd(*root);
    struct stat root_st {};
    if (::fstat(root_fd.get(), &root_st) != 0 ||
        (root_st.st_dev == st.st_dev && root_st.st_ino == st.st_ino)) {
      return absl::FailedPreconditionError(absl::StrCat(absolute, " is the root of VM ", caller_vm_,
                                                        ", which is never handed over whole"));
    }
  }
  return owned.release();
}

std::optional<std::string> NameTransfer::Resolve(const std::string& cwd,
                                                 const std::string& value) const {
  std::optional<std::string> absolute = AbsoluteName(cwd, value);
  if (!absolute.has_value()) return std::nullopt;
  absl::StatusOr<int> fd = OpenEligible(*absolute);
  if (!fd.ok()) return std::nullopt;
  ::close(*fd);
  return absolute;
}

absl::StatusOr<Transferred> NameTransfer::Bind(const std::string& caller_path, int index,
                                               bool writable) {
  absl::StatusOr<int> fd = OpenEligible(caller_path);
  if (!fd.ok()) return fd.status();
  intercept::UniqueFd owned(*fd);
  Transferred t{caller_path, absl::StrCat(target_dir_, "/", index, "/", LeafName(caller_path)),
                writable};
  absl::Status bound =
      mounter_.BindFd(caller_vm_, owned.get(), target_vm_, t.target_path, !writable);
  if (!bound.ok()) return bound;
  transferred_.push_back(t);
  return t;
}

}  // namespace shuttle::agent::invoke
