// N-API entry points: host plumbing Node lacks. Arguments are validated in TypeScript
// (src/native.ts); this layer only does the syscalls. libkrun never comes near this process:
// the VM helper msb-vmm loads it, in a process of its own.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

Napi::Value ErrnoError(Napi::Env env, const char* call, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(call) + " failed: " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

// socketPair() -> [fd, fd]: a connected pair of unix stream sockets, both close-on-exec (a child
// gets one only where it is placed in its stdio, which clears the flag on that copy). One end
// becomes a VM's channel inside the VMM, so no listening socket or path exists for anyone else.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
#ifdef SOCK_CLOEXEC
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return ErrnoError(env, "socketpair", errno);
#else
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) return ErrnoError(env, "socketpair", errno);
  for (int fd : fds) fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Number::New(env, fds[0]));
  pair.Set(1u, Napi::Number::New(env, fds[1]));
  return pair;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  return exports;
}

}  // namespace

NODE_API_MODULE(microsandbox, Init)
