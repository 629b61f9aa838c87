// Lets binaries that use absl flags accept the dashed spelling DESIGN.md section 4 uses
// (`--data-dir DIR`) as well as absl's own (`--data_dir=DIR`). Header-only.
#ifndef SHUTTLE_COMMON_FLAGS_H_
#define SHUTTLE_COMMON_FLAGS_H_

#include <string>
#include <vector>

namespace shuttle {

// Returns argv with '-' turned into '_' in every flag *name* ("--metrics-listen=x" ->
// "--metrics_listen=x"); values, positional arguments and everything after "--" are untouched.
// The returned strings own the storage that FlagArgv() points into.
inline std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> out;
  out.reserve(argc);
  bool passthrough = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !passthrough) {
      if (arg == "--") {
        passthrough = true;
      } else if (arg.size() > 2 && arg[0] == '-') {
        size_t start = arg[1] == '-' ? 2 : 1;
        size_t end = arg.find('=');
        if (end == std::string::npos) end = arg.size();
        for (size_t j = start; j < end; ++j) {
          if (arg[j] == '-') arg[j] = '_';
        }
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

// argv-style pointers into `args` (valid while `args` lives), NULL-terminated.
inline std::vector<char*> FlagArgv(std::vector<std::string>& args) {
  std::vector<char*> out;
  out.reserve(args.size() + 1);
  for (std::string& a : args) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_FLAGS_H_
