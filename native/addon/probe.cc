// Host capability probes. Kept free of N-API so the per-VM helper can share them.
#include "probe.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

namespace msb {

ProbeResult ProbeKvm(const std::string& path) {
  ProbeResult r;
#if defined(__linux__)
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    r.err = errno;
    r.detail = "open(" + path + ", O_RDWR) failed: " + strerror(r.err);
    return r;
  }
  close(fd);
  r.ok = true;
  r.detail = path + " is readable and writable";
#else
  r.detail = "KVM exists only on Linux hosts";
#endif
  return r;
}

ProbeResult ProbeLibrary(const std::string& name, const std::string& required, const std::vector<std::string>& symbols) {
  ProbeResult r;
  dlerror();
  void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    r.detail = std::string("dlopen(") + name + ") failed: " + (why ? why : "unknown error");
    return r;
  }
  for (const auto& s : symbols)
    if (dlsym(handle, s.c_str()) != nullptr) r.symbols.push_back(s);
  if (!required.empty() && dlsym(handle, required.c_str()) == nullptr) {
    r.detail = name + " loaded but has no " + required + " symbol";
  } else {
    r.ok = true;
    r.detail = name + " loaded";
  }
  dlclose(handle);
  return r;
}

}  // namespace msb
