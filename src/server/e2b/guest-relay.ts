// One TCP connection to 127.0.0.1:PORT in a sandbox, as a host-side Duplex: a relay process in
// the guest (python3, else node, else nc) connects there and copies its stdin to the connection
// and the connection to its stdout, over the agent's channel. No network device is needed in the
// sandbox. Both directions keep the agent's credit: what the host writes waits for the guest to
// take it, and the guest's bytes are taken only as fast as the reader here wants them, so a
// connection holds at most a window of bytes in each direction, whatever it carries.
//
// Half-close: ending the writable side shuts down the relay's sending side (the guest server
// reads end of file and may still answer). The relay exits when the guest server ends its side;
// the agent reports output and exit but no end of stdout, so that exit is this stream's end, and
// it ends the writable side too: nothing reaches a relay that is gone. A kept-alive connection the
// guest server closed while idle is thereby closed, and a client's agent opens a new one.
import { Duplex } from "node:stream";

import type { ExecProcess } from "../../agent-client/process.js";
import type { Sandbox } from "../../sandbox/sandbox.js";
import { PortUnreachableError } from "../errors.js";

/** Marks the relay's command line, so a test can count the relays running in a guest. */
export const RELAY_MARK = "msb getHost relay";

const PYTHON = `# ${RELAY_MARK}
import socket,sys,threading
port=int(sys.argv[1])
try:
    s=socket.create_connection(("127.0.0.1",port))
except OSError as e:
    sys.exit(f"cannot connect to 127.0.0.1:{port}: {e.strerror}")
def up():
    for d in iter(lambda: sys.stdin.buffer.read1(65536), b""): s.sendall(d)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up,daemon=True).start()
for d in iter(lambda: s.recv(65536), b""):
    sys.stdout.buffer.write(d)
    sys.stdout.buffer.flush()`;

// Writes to a pipe are synchronous in Node on Linux: at the socket's end all of it was written.
const NODE = `// ${RELAY_MARK}
const port=Number(process.argv[1]);
const s=require("net").connect(port,"127.0.0.1");
s.on("error",e=>{process.stderr.write("cannot connect to 127.0.0.1:"+port+": "+e.message+"\\n");process.exit(1);});
process.stdin.pipe(s);
s.pipe(process.stdout);
s.on("end",()=>process.exit(0));`;

// busybox nc behaves the same: it shuts down its sending side at the end of stdin and exits at
// the end of the connection. The scripts come as arguments: no quoting to get wrong.
const RELAY = `if command -v python3 >/dev/null 2>&1; then exec python3 -c "$1" "$3"
elif command -v node >/dev/null 2>&1; then exec node -e "$2" "$3"
elif command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 "$3"
else echo "the sandbox has none of python3, node or nc to relay with" >&2; exit 127; fi`;

/** A connection to `port` in sandbox `id` (its E2B id, for messages), through a guest relay. */
export class GuestConnection extends Duplex {
  private proc: ExecProcess | undefined;
  /** Bytes the guest sent so far: none means nothing answered. */
  received = 0;
  private stderr = "";
  private pumping = false;
  private wanted: (() => void) | undefined;

  constructor(
    sandbox: Sandbox,
    private readonly port: number,
    private readonly id: string,
  ) {
    super({ allowHalfOpen: false });
    try {
      this.proc = sandbox.command.spawn("sh", ["-c", RELAY, "relay", PYTHON, NODE, String(port)], { stdin: true });
    } catch (err) {
      process.nextTick(() => this.destroy(this.unreachable(err)));
    }
  }

  private unreachable(err: unknown): PortUnreachableError {
    return new PortUnreachableError(`port ${this.port} in sandbox ${this.id} could not be reached: ${(err as Error).message}`);
  }

  // A write fails only when the relay is gone, which the readable side reports (its end, or why
  // it failed); bytes for a relay that is gone are dropped, as a closed connection drops them.
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    if (this.proc) this.proc.write(chunk).then(done, done);
    else done();
  }

  override _final(done: () => void): void {
    if (this.proc) this.proc.end().then(done, done);
    else done();
  }

  override _read(): void {
    const w = this.wanted;
    this.wanted = undefined;
    if (w) w();
    else if (!this.pumping && this.proc) {
      this.pumping = true;
      void this.pump(this.proc);
    }
  }

  // Takes the relay's output only while the reader wants more: the credit it returns is what lets
  // the guest send on.
  private async pump(proc: ExecProcess): Promise<void> {
    try {
      for await (const chunk of proc) {
        if (chunk.stream === "stderr") {
          if (this.stderr.length < 1000) this.stderr += chunk.data.toString("utf8");
          continue;
        }
        this.received += chunk.data.length;
        if (!this.push(chunk.data)) await new Promise<void>((resolve) => (this.wanted = resolve));
        if (this.destroyed) return;
      }
      const exit = await proc.exit;
      if (this.received) return void this.push(null);
      const why = this.stderr.trim() || `the relay exited with ${exit.signal ?? exit.exitCode}`;
      this.destroy(
        exit.exitCode === 0
          ? new PortUnreachableError(`the server on port ${this.port} in sandbox ${this.id} closed the connection without answering`)
          : new PortUnreachableError(
              `nothing answered on port ${this.port} in sandbox ${this.id} (${why}): is a server listening on 127.0.0.1:${this.port} there?`,
            ),
      );
    } catch (err) {
      this.destroy(this.received ? (err as Error) : this.unreachable(err));
    }
  }

  // Whoever gives up on the connection takes the relay with it.
  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.proc?.kill();
    this.wanted?.();
    done(err);
  }
}
