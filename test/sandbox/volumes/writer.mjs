// Run by volumes.test.ts as a separate host process: writes argv[3] into /data/note on the volume
// argv[2], then stops and exits, so the reader is a different process from the writer.
import { CustomSandbox } from "../../../dist/index.js";

const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, volumes: [{ name: process.argv[2], path: "/data", sizeMiB: 64 }] });
try {
  const r = await sb.command.run("sh", ["-c", `echo '${process.argv[3]}' > /data/note && sync`]);
  if (r.exitCode !== 0) throw new Error(r.stderr);
} finally {
  await sb.stop();
}
