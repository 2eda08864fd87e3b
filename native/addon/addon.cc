// N-API entry points. Arguments are validated in TypeScript (src/native.ts); this layer only
// does what needs C++.
#include <napi.h>

#include "probe.h"

namespace {

Napi::Object ToObject(Napi::Env env, const msb::ProbeResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", Napi::Boolean::New(env, r.ok));
  o.Set("detail", Napi::String::New(env, r.detail));
  o.Set("errno", Napi::Number::New(env, r.err));
  return o;
}

// probe(kvmPath: string, libkrunName: string) -> { kvm, libkrun }
Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "probe(kvmPath, libkrunName) expects two strings")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("kvm", ToObject(env, msb::ProbeKvm(info[0].As<Napi::String>())));
  out.Set("libkrun", ToObject(env, msb::ProbeLibkrun(info[1].As<Napi::String>())));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
  return exports;
}

}  // namespace

NODE_API_MODULE(microsandbox, Init)
