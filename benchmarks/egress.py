"""Egress check: the server makes no outbound connection through its whole life (issue 13, item 9).

    sudo python benchmarks/egress.py [--modes hybrid,lexical] [--json FILE]

Runs itself again inside a new network namespace (`unshare --net`, only `lo` up), so that nothing
but loopback exists. There it starts `threatqa serve` (the bundled model in hybrid mode, and
lexical mode with THREATQA_MODEL= empty; no HF_HUB_OFFLINE or other offline switch set) under
`strace -f -e trace=connect,sendto,sendmsg`, with a Python audit hook in the server process
recording `socket.connect`, `socket.getaddrinfo` and the other name look-ups, and drives it through
start-up (index build included), `/`, `/config`, `/api/ask`, `/api/verify`, the Gradio chat
endpoint with `X-Gradio-History-Bucket: someone/bucket` (raw REST and gradio_client), Gradio's
file route with outside URLs (a listener on 127.0.0.2 records any connection; `example.com` can
only show up as a look-up or a connect attempt), `/gradio_api/upload`, `/gradio_api/proxy=` and
shutdown. Every system call of the server and its children is attributed to the route being
driven when it happened. Goals: no connect/sendto to an address outside 127.0.0.0/8 and ::1, no DNS
(port 53) traffic, no name look-up of another host, and no connection seen by the 127.0.0.2 listener.
Exit status 1 when a goal is missed, 2 when the check cannot run (not root, no unshare or strace).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSIDE = "THREATQA_EGRESS_INSIDE"  # set on the copy of this script that runs inside the namespace
OUTSIDE_HOST = "127.0.0.2"  # "another host": loopback, but not the address the server listens on
BUCKET = {"X-Gradio-History-Bucket": "someone/bucket"}
QUESTION = "How much money does serious organised crime generate in the UK each year?"
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "GRADIO_ANALYTICS_ENABLED")

# Runs as the server process: records socket audit events (with the time) to a file, then serves.
HOOK = """
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg",
          "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
def hook(event, args):
    if event in EVENTS:
        shown = args[1:] if event in ("socket.connect", "socket.sendto", "socket.sendmsg") else args
        os.write(fd, (json.dumps([time.time(), event, [repr(a) for a in shown]]) + "\\n").encode())
sys.addaudithook(hook)
import socket
with socket.socket() as canary:  # a known loopback attempt: proves both recorders see this process
    try:
        canary.connect(("127.0.0.1", 9))
    except OSError:
        pass
from threatqa.cli import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass
class Phase:
    name: str
    started: float
    status: str = ""
    strace: list[str] = field(default_factory=list)  # INET/INET6 connects and addressed sends
    outbound: list[str] = field(default_factory=list)  # of those, not to loopback, or DNS
    hook: list[str] = field(default_factory=list)  # audit events naming another host


class Listener:
    """Accepts on 127.0.0.2 (any connection is a fetch the server should not have made) and answers
    a tiny PNG, so that a server that did fetch would succeed and be seen."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((OUTSIDE_HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.seen.append(f"{peer[0]}:{peer[1]}")
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    body = b"\x89PNG\r\n\x1a\n"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 8\r\n\r\n" + body)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _json(port: int, path: str, payload: object, headers: dict | None = None) -> tuple:
    return request(
        port, "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def gradio_chat(port: int) -> str:
    """The Gradio REST protocol gradio_client also speaks: POST starts an event, GET streams it."""
    status, body = _json(port, "/gradio_api/call/ask", {"data": [QUESTION, 5, []]}, BUCKET)
    if status != 200:
        return f"{status}"
    event = json.loads(body)["event_id"]
    status2, stream = request(port, "GET", f"/gradio_api/call/ask/{event}", headers=BUCKET)
    done = "complete" if b"event: complete" in stream else "no answer"
    return f"{status}, {status2} {done}"


def gradio_client_chat(port: int) -> str:
    try:
        from gradio_client import Client
    except ImportError:
        return "skipped (no gradio_client)"
    client = Client(f"http://127.0.0.1:{port}/", headers=BUCKET, verbose=False)
    answer = client.predict(question=QUESTION, k=5, api_name="/ask")
    return "answered" if answer.get("passages") else "no passages"


def upload(port: int) -> str:
    boundary = "threatqa-egress"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n\x89PNG\r\n--{boundary}--\r\n"
    ).encode("latin-1")
    status, _ = request(
        port, "POST", "/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return str(status)


def routes(port: int, outside: int) -> list[tuple[str, object]]:
    """(name, call) in order; each call returns the status it saw, as text."""
    url = f"http://{OUTSIDE_HOST}:{outside}"
    answer: dict = {}

    def ask() -> str:
        status, body = _json(port, "/api/ask", {"question": QUESTION, "k": 5})
        answer.update(json.loads(body) if status == 200 else {})
        return str(status)

    def verify() -> str:
        status, body = _json(port, "/api/verify", answer)
        return f"{status} ok={json.loads(body).get('ok')}" if status == 200 else str(status)

    def get(path: str, headers: dict | None = None) -> object:
        return lambda: str(request(port, "GET", path, headers=headers)[0])

    return [
        ("GET /", get("/")),
        ("GET /config", get("/config")),
        ("POST /api/ask", ask),
        ("POST /api/verify", verify),
        ("GET /api/health", get("/api/health")),
        ("gradio /gradio_api/call/ask + history bucket", lambda: gradio_chat(port)),
        ("gradio_client predict + history bucket", lambda: gradio_client_chat(port)),
        (f"GET /gradio_api/file={url}/x.png", get(f"/gradio_api/file={url}/x.png")),
        (f"GET /file={url}/x.png", get(f"/file={url}/x.png")),
        (
            "GET /gradio_api/file=http%3A//127.0.0.2/x.png",
            get(f"/gradio_api/file=http%3A//{OUTSIDE_HOST}:{outside}/x.png"),
        ),
        ("GET /gradio_api/file=http://example.com/x.png", get("/gradio_api/file=http://example.com/x.png")),
        ("POST /gradio_api/upload", lambda: upload(port)),
        (f"GET /gradio_api/proxy={url}/x", get(f"/gradio_api/proxy={url}/x")),
        ("GET /gradio_api/proxy=https://example.com/x", get("/gradio_api/proxy=https://example.com/x")),
    ]


def server_environment(root: Path, mode: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_SWITCHES and not k.startswith("THREATQA_")}
    env |= {"THREATQA_DOCS": str(root / "docs"), "THREATQA_INDEX": str(root / "index"),
            "THREATQA_AUDIT": str(root / "audit.sqlite3"), "THREATQA_PORT": str(port),
            "THREATQA_HOST": "127.0.0.1"}  # fmt: skip
    if mode == "lexical":
        env["THREATQA_MODEL"] = ""  # else the default: the bundled all-MiniLM-L6-v2
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_pid(strace_pid: int) -> int | None:
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children")
    try:
        pids = children.read_text().split()
    except OSError:
        return None
    return int(pids[0]) if pids else None


def run_mode(mode: str, root: Path, listener: Listener) -> tuple[list[Phase], dict]:
    """One server's whole life in `mode`; returns its phases with what each one saw."""
    shutil.copytree(ROOT / "docs", root / "docs")
    port = _free_port()
    trace, hooks, log = root / "strace.log", root / "hook.jsonl", (root / "server.log").open("w")
    command = ["strace", "-f", "-qq", "-ttt", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
               sys.executable, "-c", HOOK, str(hooks), "serve"]  # fmt: skip
    phases = [Phase("start-up (index build, model, app)", time.time())]
    process = subprocess.Popen(command, env=server_environment(root, mode, port), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while True:
        try:
            phases[0].status = str(request(port, "GET", "/api/health")[0])
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                phases[0].status = f"server did not start (exit {process.poll()})"
                break
            time.sleep(0.5)
    if process.poll() is None:
        for name, call in routes(port, listener.port):
            phases.append(Phase(name, time.time()))
            try:
                phases[-1].status = call()
            except Exception as exc:  # a route that fails is reported, not fatal to the check
                phases[-1].status = f"error: {type(exc).__name__}: {str(exc)[:60]}"
            time.sleep(0.5)  # anything the route set off in the background lands in its window
    phases.append(Phase("shutdown (SIGTERM)", time.time()))
    pid = _server_pid(process.pid)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    try:
        phases[-1].status = f"exit {process.wait(60)}"
    except subprocess.TimeoutExpired:
        process.kill()
        phases[-1].status = "killed after 60 s"
    log.close()
    totals = attribute(phases, trace, hooks)
    said = [line for line in (root / "server.log").read_text(errors="replace").splitlines() if "serving on" in line]
    totals["server_said"] = said[0] if said else (root / "server.log").read_text(errors="replace")[-2000:]
    return phases, totals


STRACE_LINE = re.compile(r"^\d+\s+(\d+\.\d+)\s+(connect|sendto|sendmsg)\((.*)$")
INET = re.compile(
    r"sa_family=AF_INET6?,\s*sin6?_port=htons\((\d+)\).*?(?:inet_addr\(\"([^\"]+)\"\)|inet_pton\(AF_INET6?,\s*\"([^\"]+)\")"
)
CANARY_PORT = 9  # the server process connects here once at start (refused): the recorders must see it
LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("localhost", "")
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback or (mapped or address).is_unspecified


def _phase_at(phases: list[Phase], stamp: float) -> Phase:
    found = phases[0]
    for phase in phases:
        if phase.started <= stamp:
            found = phase
    return found


def attribute(phases: list[Phase], trace: Path, hooks: Path) -> dict:
    """Sort the strace log's INET/INET6 calls and the hook's events into the phases; totals."""
    names = ("strace_lines", "af_unix", "inet", "inet_loopback", "outbound", "dns", "hook_events", "hook_outbound",
             "to_outside_host", "canary_strace", "canary_hook")  # fmt: skip
    totals: dict = dict.fromkeys(names, 0)
    for line in trace.read_text(errors="replace").splitlines() if trace.exists() else []:
        match = STRACE_LINE.match(line)
        if not match:
            continue
        totals["strace_lines"] += 1
        stamp, call, rest = float(match[1]), match[2], match[3]
        if "AF_UNIX" in rest:
            totals["af_unix"] += 1
        inet = INET.search(rest)
        if not inet:
            continue
        port, host = int(inet[1]), inet[2] or inet[3]
        phase, shown = _phase_at(phases, stamp), f"{call} {host}:{port} {rest[rest.rfind('=') :].strip()}"
        if (call, host, port) == ("connect", "127.0.0.1", CANARY_PORT):
            totals["canary_strace"] += 1
            continue
        totals["inet"] += 1
        phase.strace.append(shown)
        totals["to_outside_host"] += host == OUTSIDE_HOST
        if port == 53:
            totals["dns"] += 1
        if port == 53 or not is_loopback(host):
            totals["outbound"] += 1
            phase.outbound.append(shown)
        else:
            totals["inet_loopback"] += 1
    for line in hooks.read_text().splitlines() if hooks.exists() else []:
        stamp, event, args = json.loads(line)
        if event == "socket.connect" and args == [repr(("127.0.0.1", CANARY_PORT))]:
            totals["canary_hook"] += 1
            continue
        totals["hook_events"] += 1
        if not _hook_is_local(event, args):
            totals["hook_outbound"] += 1
            _phase_at(phases, stamp).hook.append(f"{event} {' '.join(args)[:80]}")
    return totals


def _hook_is_local(event: str, args: list[str]) -> bool:
    """A socket event that stays on this machine: a Unix socket, or a loopback address or name."""
    first = args[0] if args else ""
    if event in LOOKUPS:
        host = first.strip("'\"b")
        return host in ("None", "") or is_loopback(host)
    if first.startswith(("'", '"', "b'")):  # AF_UNIX: a path
        return True
    found = re.match(r"\(['\"]([^'\"]*)['\"],\s*(\d+)", first)
    return bool(found) and is_loopback(found[1]) and found[2] != "53"


def inside(modes: list[str], out: Path | None) -> int:
    results, ok = {}, True
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"threatqa-egress-{mode}-") as tmp:
            listener = Listener()
            started = time.monotonic()
            phases, totals = run_mode(mode, Path(tmp), listener)
            listener.close()
        totals["listener_connections"] = len(listener.seen)
        totals["seconds"] = round(time.monotonic() - started, 1)
        started_ok = phases[0].status == "200"
        ok &= started_ok and totals["outbound"] == 0 and totals["hook_outbound"] == 0 and not listener.seen
        ok &= totals["to_outside_host"] == 0 and totals["canary_strace"] == 1 and totals["canary_hook"] == 1
        results[mode] = {"totals": totals, "phases": [vars(p) for p in phases]}
        _print(mode, phases, totals)
    if out:
        out.write_text(json.dumps(results, indent=1))
    print("all goals met: no outbound connection" if ok else "GOAL MISSED")
    return 0 if ok else 1


def _print(mode: str, phases: list[Phase], totals: dict) -> None:
    print(f"\n{mode} mode: server inside `unshare --net` (lo only), strace -f on the server and its children")
    print(f"server: {totals['server_said']}")
    print(f"{'route':58} {'status':26} {'inet calls':>10} {'outbound':>8} {'py hook':>7}")
    for p in phases:
        print(f"{p.name[:58]:58} {p.status[:26]:26} {len(p.strace):10d} {len(p.outbound):8d} {len(p.hook):7d}")
        for item in (p.outbound + p.hook)[:5]:
            print(f"    {item}")
    print(
        f"totals: {totals['strace_lines']} connect/sendto/sendmsg calls traced ({totals['af_unix']} AF_UNIX), "
        f"{totals['inet']} AF_INET/AF_INET6 of which {totals['inet_loopback']} loopback and {totals['outbound']} "
        f"outbound ({totals['dns']} DNS); audit hook: {totals['hook_events']} socket events, "
        f"{totals['hook_outbound']} naming another host; 127.0.0.2 listener: {totals['listener_connections']} "
        f"connections; canary (one refused connect to 127.0.0.1:9 made on purpose, not counted above) seen by "
        f"strace {totals['canary_strace']}x, by the hook {totals['canary_hook']}x; {totals['seconds']} s"
    )


def cannot_run() -> str | None:
    """Why the namespace check cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (unshare --net)"
    for tool in ("unshare", "strace", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode:
        return f"unshare --net fails here: {probe.stderr.strip()[:200]}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="hybrid,lexical", help="comma-separated: hybrid, lexical")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if os.environ.get(INSIDE) == "1":
        return inside(modes, args.json)
    reason = cannot_run()
    if reason:
        print(f"egress check not run: {reason}", file=sys.stderr)
        return 2
    script = f'ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} "$@"'
    argv = ["--modes", ",".join(modes)] + (["--json", str(args.json.resolve())] if args.json else [])
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "egress", *argv], env=os.environ | {INSIDE: "1"}
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
