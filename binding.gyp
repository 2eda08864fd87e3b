{
  # The N-API addon. What must not run inside Node (the VMM) lives in separate helper
  # executables added next to it; the guest agent is built by native/agent/Makefile with musl.
  "targets": [
    {
      "target_name": "microsandbox",
      "sources": ["native/addon/addon.cc", "native/addon/probe.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"],
      "xcode_settings": {
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0"
      },
      "conditions": [
        ["OS=='linux'", {"libraries": ["-ldl"]}]
      ]
    },
    {
      # The per-VM helper. Its libkrun mode decodes proto/vmm.proto with nanopb (code generated
      # here, runtime linked statically); without nanopb it is built with the QEMU exec mode only.
      "target_name": "msb-vmm",
      "type": "executable",
      "variables": {"nanopb_lib": "<!(node native/vmm/nanopb.mjs lib)"},
      "sources": ["native/vmm/vmm.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra"],
      "xcode_settings": {"MACOSX_DEPLOYMENT_TARGET": "11.0"},
      "conditions": [
        ["nanopb_lib==''", {"defines": ["MSB_VMM_NO_KRUN"]}, {
          "sources": ["native/vmm/config.c", "native/vmm/krun.c", "native/vmm/status.c"],
          # Debian's libprotobuf-nanopb.a is built with PB_ENABLE_MALLOC (pointer fields).
          "defines": ["PB_ENABLE_MALLOC"],
          "include_dirs": ["native/vmm", "<(INTERMEDIATE_DIR)/proto"],
          "libraries": ["<(nanopb_lib)"],
          "actions": [{
            "action_name": "nanopb_vmm",
            "inputs": ["proto/vmm.proto", "proto/vmm.options"],
            "outputs": ["<(INTERMEDIATE_DIR)/proto/vmm.pb.c", "<(INTERMEDIATE_DIR)/proto/vmm.pb.h"],
            "action": ["<!(node native/vmm/nanopb.mjs generator)", "-q", "-I", "proto",
                       "-D", "<(INTERMEDIATE_DIR)/proto", "-f", "proto/vmm.options", "proto/vmm.proto"],
            "process_outputs_as_sources": 1
          }]
        }],
        ["OS=='linux'", {"libraries": ["-ldl"]}]
      ]
    }
  ]
}
