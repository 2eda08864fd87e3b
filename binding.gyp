{
  # The N-API addon: what Node cannot ask the kernel itself (KVM capabilities). What must not run
  # inside Node (the VMM, libkrun) lives in the helper executable msb-vmm, built next to it; the
  # guest agent is built by native/agent/Makefile with musl.
  "targets": [
    {
      "target_name": "microsandbox",
      "sources": ["native/addon/addon.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror"],
      "xcode_settings": {
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0"
      }
    },
    {
      # The per-VM helper and host probe. It speaks proto/vmm.proto with nanopb (code generated
      # here, runtime linked statically).
      "target_name": "msb-vmm",
      "type": "executable",
      "sources": ["native/vmm/vmm.c", "native/vmm/config.c", "native/vmm/host.c", "native/vmm/jail.c",
                  "native/vmm/krun.c", "native/vmm/probe.c", "native/vmm/status.c", "native/vmm/policy.c",
                  "native/vmm/dns.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror"],
      # Debian's libprotobuf-nanopb.a is built with PB_ENABLE_MALLOC (pointer fields).
      "defines": ["PB_ENABLE_MALLOC"],
      "include_dirs": ["native/vmm", "<(INTERMEDIATE_DIR)/proto"],
      "libraries": ["<!(node native/vmm/nanopb.mjs lib)"],
      "xcode_settings": {"MACOSX_DEPLOYMENT_TARGET": "11.0"},
      "actions": [{
        "action_name": "nanopb_vmm",
        "inputs": ["proto/vmm.proto", "proto/vmm.options"],
        "outputs": ["<(INTERMEDIATE_DIR)/proto/vmm.pb.c", "<(INTERMEDIATE_DIR)/proto/vmm.pb.h"],
        "action": ["<!(node native/vmm/nanopb.mjs generator)", "-q", "-I", "proto",
                   "-D", "<(INTERMEDIATE_DIR)/proto", "-f", "proto/vmm.options", "proto/vmm.proto"],
        "process_outputs_as_sources": 1
      }],
      "conditions": [
        # The network supervisor: seccomp user notification and pidfds are Linux's.
        ["OS=='linux'", {"libraries": ["-ldl"], "sources": ["native/vmm/supervise.c"]}]
      ]
    }
  ],
  "conditions": [
    ["OS=='linux'", {
      "targets": [{
        # Preloaded into QEMU when msb-vmm opened some of its files before the jail (guest RAM's
        # file): it hands QEMU those descriptors (native/openfd/openfd.c).
        "target_name": "msb-openfd",
        "type": "shared_library",
        "product_extension": "so",
        "sources": ["native/openfd/openfd.c"],
        "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC"],
        "libraries": ["-ldl"]
      }]
    }]
  ]
}
