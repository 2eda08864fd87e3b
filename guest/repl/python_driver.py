# In-guest Python REPL driver: runs cells from the host in one persistent namespace (see src/sandbox/repl-frames.ts).
#
# Shipped behind a prelude that defines FRAME_READY, FRAME_END and MAX_TEXT_CHARS (the host's
# constants; driverSource in src/sandbox/repl.ts). Runs on Debian 12's python3-minimal, so it
# imports only what libpython3.11-minimal ships: no json (we encode our two tiny JSON objects by
# hand), no codeop/code (we use ast + compile); top-level await is not supported.
#
# Cells come in and control frames go out on the channel the agent gave this process (fd 3, named
# by MSB_CHANNEL_FD). fd 1 and 2 are the user's: what a cell prints, itself or through child
# processes, reaches the host as this process's own output, and nothing it writes there can break
# the conversation. stdin is /dev/null, so code that reads it cannot take the host's cells.

import os
import sys

# Out of the environment, and not inherited, so user code and its children do not come across it.
_CHANNEL = int(os.environ.pop("MSB_CHANNEL_FD"))
os.set_inheritable(_CHANNEL, False)

import ast
import builtins
import io
import linecache
import signal
import struct
import traceback
import types


def _send(ftype, payload):
    view = memoryview(struct.pack(">BI", ftype, len(payload)) + payload)
    while view:
        view = view[os.write(_CHANNEL, view):]


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


sys.stdout = sys.__stdout__ = _make_stream(1)
sys.stderr = sys.__stderr__ = _make_stream(2)

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
    return type(exc).__name__[:MAX_TEXT_CHARS], evalue[:MAX_TEXT_CHARS]


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
                return repr(value)[:MAX_TEXT_CHARS]
            except BaseException:
                return None
    return None


def _flush_streams():
    # Whatever a cell left in Python's buffers goes to fd 1/2 before its end frame is sent.
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
        try:
            stream.flush()
        except BaseException:
            pass


def _read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(_CHANNEL, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def main():
    version = "%d.%d.%d" % sys.version_info[:3]
    _send(FRAME_READY, _json_obj([("language", "python"), ("version", version)]))
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
        if result is None:
            end = _json_obj([("status", "ok")] + ([("result", value)] if value is not None else []))
        else:
            end = _json_obj([("status", "error"), ("ename", result[0]), ("evalue", result[1])])
        _send(FRAME_END, end)
    # The host closed the channel: leave without waiting for user threads.
    _flush_streams()
    os._exit(0)


if __name__ == "__main__":
    main()
