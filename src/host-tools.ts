// Host programs microsandbox runs that are not its own (mkfs.ext4 from e2fsprogs): found on the
// PATH or in the system's sbin directories, which Debian and Ubuntu leave off a user's PATH, and
// named with the package to install when absent.
import { accessSync, constants } from "node:fs";
import path from "node:path";

const SBIN = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/opt/homebrew/opt/e2fsprogs/sbin", "/usr/local/opt/e2fsprogs/sbin"];

/** Where each tool comes from, for the message when it is missing. */
const PACKAGES: Record<string, string> = {
  "mkfs.ext4": "e2fsprogs (Debian/Ubuntu: sudo apt-get install e2fsprogs; Fedora: sudo dnf install e2fsprogs; macOS: brew install e2fsprogs)",
};

const found = new Map<string, string>();

/** The path of host program `name`, or undefined when neither the PATH nor an sbin directory has it. */
export function findHostTool(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const known = found.get(name);
  if (known) return known;
  for (const dir of [...(env.PATH ?? "").split(path.delimiter).filter(Boolean), ...SBIN]) {
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      found.set(name, file);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What to say when `name` is missing: what it is for, and what to install. */
export function missingToolHint(name: string, purpose: string): string {
  return `${name} not found (${purpose}): install ${PACKAGES[name] ?? `the package that provides ${name}`}`;
}
