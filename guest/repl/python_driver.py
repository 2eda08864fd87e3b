# In-guest Python REPL driver: runs cells from the host in one persistent namespace (see src/sandbox/repl-frames.ts).
#
# Runs on Debian 12's python3-minimal, so it imports only what libpython3.11-minimal ships:
# no json (we encode our two tiny JSON objects by hand), no codeop/code (we use ast + compile),
# no queue/asyncio (a lock and a select loop are enough; top-level await is not supported).

import os
import sys

# Save the real stdout and stdin before anything can write or read them: from here on fd 1/2
# belong to the user's code and fd 0 is /dev/null, so nothing the cell does (print, os.write,
# child processes) can reach the protocol streams except by guessing these private fds.
# os.dup() makes non-inheritable fds, so child processes do not get them either.
_PROTO_OUT = os.dup(1)
_PROTO_IN = os.dup(0)

import ast
import builtins
import io
import linecache
import select
import signal
import struct
import threading
import traceback
import types

_MAX_EVALUE = 16 * 1024  # characters; the host caps control frames, a huge repr must not break it
_READ_CHUNK = 1 << 20

_T_STDOUT, _T_STDERR, _T_END, _T_READY = 1, 2, 3, 4

# Frames come from the forwarder thread and the main thread; one lock keeps them whole and ordered.
_send_lock = threading.Lock()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(ftype, payload):
    _write_all(_PROTO_OUT, struct.pack(">BI", ftype, len(payload)) + payload)


def _json_str(s):
    # Escape everything outside printable ASCII so the result is valid JSON and valid UTF-8 even for
    # lone surrogates (e.g. from surrogateescape'd filenames in an exception message).
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
        else:
            out.append("\\u%04x" % o)
    out.append('"')
    return "".join(out)


def _json_obj(pairs):
    return ("{" + ",".join(_json_str(k) + ":" + _json_str(v) for k, v in pairs) + "}").encode("ascii")


# --- fd-level capture ---------------------------------------------------------------------------

_out_r, _out_w = os.pipe()
_err_r, _err_w = os.pipe()
os.dup2(_out_w, 1)
os.dup2(_err_w, 2)
os.close(_out_w)
os.close(_err_w)
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
os.close(_devnull)
# Non-blocking read ends let the drain below read "everything that is there now" and stop.
os.set_blocking(_out_r, False)
os.set_blocking(_err_r, False)
_CAPTURE = ((_out_r, _T_STDOUT), (_err_r, _T_STDERR))


def _pump(fd, ftype):
    """Forward what fd holds right now; True if it had data. Caller holds _send_lock."""
    got = False
    while True:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return got
        if not data:
            return got
        _send(ftype, data)
        got = True


def _forwarder():
    # Runs for the life of the driver: the cell may write more than a pipe holds (64 KiB), so
    # someone must read while it runs. Output from background threads or children that outlive a
    # cell is forwarded whenever it comes.
    fds = [fd for fd, _ in _CAPTURE]
    while True:
        try:
            select.select(fds, [], [])
        except InterruptedError:
            continue
        with _send_lock:
            for fd, ftype in _CAPTURE:
                _pump(fd, ftype)


def _drain():
    # The cell has returned, so every byte it wrote through fd 1/2 is already in the pipes; reading
    # both until EAGAIN under the send lock forwards all of it before the end frame.
    with _send_lock:
        for fd, ftype in _CAPTURE:
            _pump(fd, ftype)


def _make_stream(fd):
    # Line-buffered text over fd 1/2 (like the interactive prompt on a terminal), so print() output
    # and raw os.write(1, ...) output keep their order. A partial line written with
    # sys.stdout.write() stays buffered until a newline or the end of the cell.
    return io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(fd, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


class _NoStdin(io.TextIOBase):
    """sys.stdin replacement: stdin carries the host's protocol, so reading it must fail loudly."""

    def _fail(self, *args, **kwargs):
        # EOFError is what input() raises on a closed stdin, so code that handles EOF still works.
        raise EOFError("stdin is not available in the sandbox REPL (it carries the driver protocol)")

    read = readline = readlines = _fail

    def readable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("stdin is not available in the sandbox REPL")


sys.stdout = sys.__stdout__ = _make_stream(1)
sys.stderr = sys.__stderr__ = _make_stream(2)
sys.stdin = sys.__stdin__ = _NoStdin()

# --- interrupts ---------------------------------------------------------------------------------

# A SIGINT between cells (or while a frame is being written) must not kill the driver or cut a
# frame in half, so it is ignored there; inside a cell the C default handler raises
# KeyboardInterrupt like at the prompt (a Python handler would add a driver frame to the traceback).
signal.signal(signal.SIGINT, signal.SIG_IGN)

# --- execution ----------------------------------------------------------------------------------

# A fresh __main__ module so user classes pickle, and the driver's own names stay out of sight.
_main = types.ModuleType("__main__")
_main.__dict__["__builtins__"] = builtins
sys.modules["__main__"] = _main
_globals = _main.__dict__

_CELL_PREFIX = "<cell-"


def _user_traceback(tb):
    # Drop the frames above the cell's own (the driver, ast.parse for a SyntaxError), like the
    # interactive prompt hides its machinery. A SyntaxError keeps none and prints as at the prompt.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(_CELL_PREFIX):
        tb = tb.tb_next
    return tb


def _report(exc):
    tb = _user_traceback(exc.__traceback__)
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        if sys.excepthook is sys.__excepthook__:
            # The C default hook reads source lines from disk only; traceback's printer uses
            # linecache, where the cell's source is registered.
            traceback.print_exception(type(exc), exc, tb)
        else:
            sys.excepthook(type(exc), exc, tb)
    except BaseException:
        # The user's excepthook failed: fall back to the default printer so the error is not lost.
        try:
            traceback.print_exception(type(exc), exc, tb)
        except BaseException:
            pass
    try:
        evalue = str(exc)
    except BaseException:
        evalue = "<unprintable %s object>" % type(exc).__name__
    return type(exc).__name__, evalue[:_MAX_EVALUE]


def _run_cell(source, filename):
    # Register the source so tracebacks can show the user's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    if tree.body:
        exec(compile(tree, filename, "exec", dont_inherit=True), _globals)
    if last is not None:
        value = eval(compile(last, filename, "eval", dont_inherit=True), _globals)
        # displayhook prints repr(value) unless it is None and stores it as builtins._, exactly
        # what the interactive prompt does (and a user-installed displayhook is honoured).
        sys.displayhook(value)
        if value is not None:
            # The value also goes to the host on its own (the cell's result, as notebooks have).
            try:
                return repr(value)[:_MAX_EVALUE]
            except BaseException:
                return None
    return None


def _flush_streams():
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        try:
            stream.flush()
        except BaseException:
            pass


def _read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(_PROTO_IN, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def main():
    threading.Thread(target=_forwarder, name="repl-output", daemon=True).start()
    version = "%d.%d.%d" % sys.version_info[:3]
    with _send_lock:
        _send(_T_READY, _json_obj([("language", "python"), ("version", version)]))
    count = 0
    while True:
        header = _read_exact(4)
        if header is None:
            break
        (length,) = struct.unpack(">I", header)
        body = _read_exact(length)
        if body is None:
            break
        count += 1
        source = body.decode("utf-8", "replace")
        result = None
        value = None
        try:
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                value = _run_cell(source, "%s%d>" % (_CELL_PREFIX, count))
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the driver lives on
            result = _report(exc)
            del exc
        _flush_streams()
        _drain()
        if result is None:
            end = _json_obj([("status", "ok")] + ([("result", value)] if value is not None else []))
        else:
            end = _json_obj([("status", "error"), ("ename", result[0]), ("evalue", result[1])])
        with _send_lock:
            _send(_T_END, end)
    # Host closed stdin: forward anything left, then leave without waiting for user threads.
    _flush_streams()
    _drain()
    os._exit(0)


if __name__ == "__main__":
    main()
