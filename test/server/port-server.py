# The guest's server in test/server/e2b-ports.test.ts, standard library only: HTTP/1.1 with
# keep-alive, bodies streamed both ways, a download that counts what it sent, a WebSocket echo,
# and an upgrade that answers only once the client half-closed.
import base64, hashlib, http.server, socketserver, sys

sent = 0  # bytes of /bytes/N bodies written so far

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def body(self):  # the request body as it arrives, chunked or by Content-Length
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(n)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", 0))
        while left:
            d = self.rfile.read1(min(left, 65536))
            left -= len(d)
            yield d
    def send_chunk(self, d):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(d), d))
    def do_GET(self):
        global sent
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.headers.get("Upgrade", "") == "x-until-eof":  # reads to the client's half-close, then answers
            self.send_response(101)
            self.send_header("Upgrade", "x-until-eof")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.close_connection = True
            got = b"".join(iter(lambda: self.rfile.read1(65536), b""))
            self.wfile.write(b"read %d bytes to the end: %s" % (len(got), got[:20]))
            return
        if self.path == "/sent":
            return self.text(str(sent))
        if self.path.startswith("/bytes/"):
            n = int(self.path[7:])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(range(256)) * 256
            while n:
                d = block[: min(n, len(block))]
                self.wfile.write(d)
                n -= len(d)
                sent += len(d)
            return
        # The port of the connection that carried it: the same for requests on one kept-alive connection.
        self.text(f"hello from guest port {self.client_address[1]}")
    def text(self, s):
        self.send_response(200)
        self.send_header("Content-Length", str(len(s)))
        self.end_headers()
        self.wfile.write(s.encode())
    def do_POST(self):
        if self.path == "/echo":  # each piece back as it came
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for d in self.body():
                self.send_chunk(d)
            self.send_chunk(b"")
            return
        h, n = hashlib.sha256(), 0
        for d in self.body():
            h.update(d)
            n += len(d)
        self.text(f"{n} {h.hexdigest()}")
    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
        self.end_headers()
        self.close_connection = True
        r, w = self.rfile, self.wfile
        while True:
            b0, b1 = r.read(2)
            n = b1 & 127
            if n == 126: n = int.from_bytes(r.read(2), "big")
            elif n == 127: n = int.from_bytes(r.read(8), "big")
            mask = r.read(4) if b1 & 128 else bytes(4)
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(r.read(n)))
            op = b0 & 15
            if op == 8:  # close: answer it and end the connection
                w.write(bytes([0x88, len(data)]) + data)
                return
            if op in (1, 2):
                data = b"echo:" + data
                n = len(data)
                size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536 else bytes([127]) + n.to_bytes(8, "big")
                w.write(bytes([0x80 | op]) + size + data)

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
