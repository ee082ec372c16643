#!/usr/bin/env python3
"""Scrape latency of a daemon's metrics endpoint with N idle TCP connections open.

Usage: scripts/metrics-scrape.py BINARY [IDLE] [SCRAPES]   (e.g. target/release/ocd-smol 200 50)
Starts `BINARY run` (an indexer, 127.0.0.1 only, metrics on 127.0.0.1:<free port>) in a temp dir,
opens IDLE silent TCP connections to the metrics port, then runs SCRAPES sequential
`curl -s -o /dev/null -w '%{time_total}' --max-time 30 http://ADDR/metrics` and prints the
distribution; then 8 concurrent curls. Stops the daemon with SIGTERM.
"""
import os, signal, socket, statistics, subprocess, sys, tempfile, time, concurrent.futures

binary = sys.argv[1]
idle_n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
scrapes = int(sys.argv[3]) if len(sys.argv) > 3 else 50

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

d = tempfile.mkdtemp()
port = free_port()
subprocess.run([binary, "keygen", "--data-dir", f"{d}/data", "--network-key", f"{d}/psk.key"],
               check=True, capture_output=True)
cfg = f"{d}/ocd.toml"
open(cfg, "w").write(f'mode = "indexer"\nlisten = "127.0.0.1:0"\ndata_dir = "{d}/data"\n'
                     f'network_key = "{d}/psk.key"\nmetrics = "127.0.0.1:{port}"\n')
log = open(f"{d}/log", "w")
p = subprocess.Popen([binary, "run", "--config", cfg], stderr=log, stdout=subprocess.DEVNULL)
addr = f"127.0.0.1:{port}"
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
    except OSError:
        time.sleep(0.05)

def curl():
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                          "--max-time", "30", f"http://{addr}/metrics"], capture_output=True, text=True)
    code, t = out.stdout.split()
    return code, float(t)

try:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle_n)]
    time.sleep(0.2)
    res = [curl() for _ in range(scrapes)]
    ok = [t for c, t in res if c == "200"]
    print(f"{os.path.basename(binary)}: {idle_n} idle connections open; {len(ok)}/{scrapes} scrapes 200")
    if ok:
        q = statistics.quantiles(ok, n=100) if len(ok) > 1 else [ok[0]] * 99
        print(f"  sequential curl time_total: min {min(ok)*1e3:.2f} ms, median {statistics.median(ok)*1e3:.2f} ms, "
              f"p95 {q[94]*1e3:.2f} ms, max {max(ok)*1e3:.2f} ms")
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        par = list(ex.map(lambda _: curl(), range(8 * 5)))
    okp = [t for c, t in par if c == "200"]
    print(f"  8 concurrent clients x5: {len(okp)}/{len(par)} 200, max {max(okp)*1e3 if okp else float('nan'):.2f} ms")
    # Are the idle connections closed by the server's header timeout?
    time.sleep(12)
    closed = 0
    for s in idle:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed += 1
        except socket.timeout:
            pass
        except OSError:
            closed += 1
    print(f"  after 12 s: {closed}/{idle_n} idle connections closed by the server")
finally:
    p.send_signal(signal.SIGTERM)
    print(f"  daemon exit code after SIGTERM: {p.wait(timeout=20)}")
