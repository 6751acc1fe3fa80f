#!/usr/bin/env python3
"""Benchmarks of hbr-source-agent (issue 9): probe latency beside the operators' CLIs, scale,
reaction to config edits, footprint. Prints Markdown tables (docs/benchmarks.md holds a run).

    bench/run.sh [--runs N] [--only latency,scale,reaction,footprint] [--json FILE]

Needs a release build (bench/run.sh builds it), the test servers (scripts/servers/KIND.sh up,
run here), root (as the servers do), and the CLIs: showmount, rpcinfo, nfs-ls, smbclient, java
with the cached Hadoop jars, and awscli (installed once into a venv under $HBR_CACHE).
Everything listens on loopback. Python 3 standard library only.
"""

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
AGENT = os.path.join(TARGET, "release", "hbr-source-agent")
SMB_CHILD = os.path.join(TARGET, "release", "hbr-source-agent-smb-probe")
HELPER = os.path.join(TARGET, "release", "examples", "bench-hbr")
CACHE = os.environ.get("HBR_CACHE", "/var/cache/hbr-source-agent")
RUN = os.environ.get("HBR_TEST_RUN", "/tmp/hbr-test-servers")
HADOOP_LIB = os.path.join(CACHE, "hadoop", "hadoop-2.7.3-min", "lib")
AWSCLI = os.path.join(CACHE, "awscli-1.46.3")
AWSCLI_VERSION = "1.46.3"
CLUSTER = "cl-0004i0nlngorvgjpl7ck"
# The fake HBR's default account (tests/support/fake_hbr.rs); fake credentials.
FAKE_AK = ("fake-access-key-id", "fake-access-key-secret")
SMB_PORT, SMB_USER, SMB_PASSWORD = 4455, "smbtest", "S3cretPass"
HDFS_RPC, HDFS_USER, HDFS_DIR = "127.0.0.1:8020", "hbr", "/hbr-bench/data"

# Round trips each probe makes on the wire when it passes, counted from src/probe/KIND.rs
# (TCP connects count one each). See docs/benchmarks.md for the breakdown.
ROUND_TRIPS = {"nfs": 11, "smb": 18, "s3": 4, "hdfs": 10, "filesystem": 0}


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


def ms(x):
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.2f} s"


# ---------------------------------------------------------------- servers and tools


def servers_up():
    out = {}
    for kind in ("nfs", "smb", "s3", "hdfs"):
        script = os.path.join(REPO, "scripts", "servers", f"{kind}.sh")
        r = subprocess.run(["bash", script, "up"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{script} up failed:\n{r.stdout}{r.stderr}")
        out[kind] = r.stdout.strip()
    with open(out["s3"]) as f:
        keys = json.load(f)
    return {
        "nfs_share": os.path.join(out["nfs"], "exports", "open"),
        "s3_endpoint": keys["endpoint"],
        "s3_key": (keys["good"]["id"], keys["good"]["secret"]),
    }


def awscli():
    """awscli in its own venv under the cache, never into the system."""
    aws = os.path.join(AWSCLI, "bin", "aws")
    if os.path.exists(os.path.join(AWSCLI, ".complete")):
        return aws
    say(f"installing awscli=={AWSCLI_VERSION} into {AWSCLI} (once)")
    shutil.rmtree(AWSCLI, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", AWSCLI], check=True)
    subprocess.run(
        [os.path.join(AWSCLI, "bin", "pip"), "install", "--quiet",
         "--disable-pip-version-check", f"awscli=={AWSCLI_VERSION}"],
        check=True,
    )
    open(os.path.join(AWSCLI, ".complete"), "w").close()
    return aws


class Work:
    """A scratch directory with the files the agent and the CLIs read (0600: secrets)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hbr-bench-")
        self.fsdir = tempfile.mkdtemp(prefix="hbr-bench-", dir="/dev/shm")
        with open(os.path.join(self.fsdir, "data.bin"), "w") as f:
            f.write("x")
        self.hconf = os.path.join(self.dir, "hadoop-conf")
        os.makedirs(self.hconf)
        with open(os.path.join(self.hconf, "core-site.xml"), "w") as f:
            f.write('<?xml version="1.0"?>\n<configuration><property><name>fs.defaultFS</name>'
                    f"<value>hdfs://{HDFS_RPC}</value></property></configuration>\n")
        with open(os.path.join(self.hconf, "log4j.properties"), "w") as f:
            f.write("log4j.rootLogger=OFF\n")
        self.seed_hdfs()
        self.smb_auth = self.secret_file("smb-auth", f"username = {SMB_USER}\npassword = {SMB_PASSWORD}\n")

    def hadoop(self, *args):
        """Hadoop's FsShell (`hdfs dfs ARGS`) from the cached jars."""
        return ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", f"{self.hconf}:{HADOOP_LIB}/*",
                "org.apache.hadoop.fs.FsShell", *args]

    def seed_hdfs(self):
        """A directory holding one file with data, so the probe checks DataNode reach too."""
        blob = os.path.join(self.dir, "blob.bin")
        with open(blob, "w") as f:
            f.write("hbr-source-agent bench data\n")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.dir, "HADOOP_USER_NAME": "root"}
        for args in (["-mkdir", "-p", HDFS_DIR], ["-put", "-f", blob, HDFS_DIR + "/blob.bin"],
                     ["-chmod", "-R", "755", "/hbr-bench"]):
            r = subprocess.run(self.hadoop(*args), env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"hdfs dfs {' '.join(args)} failed:\n{r.stdout}{r.stderr}")

    def secret_file(self, name, text):
        path = os.path.join(self.dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.fsdir, ignore_errors=True)


def source(kind, name, srv, work, extra=""):
    if kind == "filesystem":
        return f'[filesystem.{name}]\npath = "{work.fsdir}"\n{extra}\n'
    if kind == "nfs":
        return (f'[nas.{name}]\nprotocol = "nfs"\nservers = ["127.0.0.1"]\n'
                f'share_path = "{srv["nfs_share"]}"\n{extra}\n')
    if kind == "smb":
        return (f'[nas.{name}]\nprotocol = "smb"\nservers = ["127.0.0.1:{SMB_PORT}"]\n'
                f'share_path = "/share"\nusername = "{SMB_USER}"\npassword = "{SMB_PASSWORD}"\n{extra}\n')
    if kind == "s3":
        ak, sk = srv["s3_key"]
        return (f'[s3.{name}]\nendpoint = "{srv["s3_endpoint"]}"\nbucket = "backups"\n'
                f'region = "us-east-1"\naccess_key_id = "{ak}"\naccess_key_secret = "{sk}"\n{extra}\n')
    if kind == "hdfs":
        return f'[hdfs.{name}]\nnamenodes = ["{HDFS_RPC}"]\nuser = "{HDFS_USER}"\npaths = ["{HDFS_DIR}"]\n{extra}\n'
    raise ValueError(kind)


def config(work, name, endpoint, sources, concurrency=16, timeout="15s", writes=None):
    state = os.path.join(work.dir, name + ".state")
    writes = f"write_concurrency = {writes}\n" if writes else ""
    text = (f'version = 1\n\n[agent]\ncluster_id = "{CLUSTER}"\nstate_dir = "{state}"\n'
            f'probe_timeout = "{timeout}"\nprobe_concurrency = {concurrency}\n{writes}\n'
            f'[control_plane]\nregion = "cn-hangzhou"\nendpoint = "{endpoint}"\n\n{sources}')
    d = os.path.join(work.dir, name)
    os.makedirs(d, exist_ok=True)
    return work.secret_file(os.path.join(name, "agent.toml"), text)


def agent_env(work):
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": work.dir,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": FAKE_AK[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": FAKE_AK[1],
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }


def timed(argv, env=None, ok=(0,)):
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in ok:
        raise RuntimeError(f"{argv[0]} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return dt, r


def measured(argv, env=None, ok=(0,)):
    """Wall time and peak RSS (GNU time), plus the run."""
    out = tempfile.mktemp(prefix="hbr-bench-time-")
    dt, r = timed(["/usr/bin/time", "-o", out, "-f", "%M"] + argv, env=env, ok=ok)
    with open(out) as f:
        kib = int(f.read().split()[-1])
    os.unlink(out)
    return dt, kib / 1024, r


class Fake:
    """examples/bench-hbr: the strict fake HBR, one stamped line per answered request."""

    LINE = re.compile(r'^(\d+\.\d+) .*action="?([^"\s]+)"? status="?([^"\s]+)"? code="?([^"\s]+)"?')

    def __init__(self, latency_ms=0, rate_limit=None):
        argv = [HELPER, "--latency-ms", str(latency_ms)]
        if rate_limit:
            argv += ["--rate-limit", str(rate_limit)]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.p.stdout.readline()
        if not first.startswith("endpoint="):
            raise RuntimeError(f"bench-hbr said {first!r}")
        self.endpoint = first.strip().split("=", 1)[1]
        self.events = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            m = self.LINE.match(line)
            if m:
                with self.cond:
                    self.events.append((float(m[1]), m[2], m[3], m[4]))
                    self.cond.notify_all()

    def wait(self, pred, start, timeout):
        """The first event from index `start` on that matches; None after `timeout` s."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.events)):
                    if pred(self.events[i]):
                        return i, self.events[i]
                left = end - time.monotonic()
                if left <= 0:
                    return None, None
                self.cond.wait(left)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


class Daemon:
    """`hbr-source-agent run` with a NOTIFY_SOCKET of ours, so READY=1 can be timed."""

    def __init__(self, work, cfg, name):
        self.sock_path = os.path.join(work.dir, name + ".notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.ready_at = None
        self.got_ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        rt = os.path.join(work.dir, name + ".rt")
        os.makedirs(rt, exist_ok=True)
        env = dict(agent_env(work), NOTIFY_SOCKET=self.sock_path)
        self.started = time.time()
        self.p = subprocess.Popen([AGENT, "--config", cfg, "-q", "run", "--runtime-dir", rt],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _read(self):
        while True:
            try:
                msg = self.sock.recv(4096).decode(errors="replace")
            except OSError:
                return
            if "READY=1" in msg.split("\n") and self.ready_at is None:
                self.ready_at = time.time()
                self.got_ready.set()

    def wait_ready(self, timeout=120):
        if not self.got_ready.wait(timeout):
            self.stop()
            raise RuntimeError("the daemon sent no READY=1")
        return self.ready_at - self.started

    def stop(self):
        self.p.terminate()
        try:
            _, err = self.p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
        self.sock.close()
        if self.p.returncode != 0:
            say(f"daemon exited {self.p.returncode}: {err.decode(errors='replace')[-2000:]}")


# ---------------------------------------------------------------- 1. latency


def loopback_rtt(n=2000):
    """Median TCP ping-pong round trip on 127.0.0.1 (1 byte each way, TCP_NODELAY)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def echo():
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while (b := c.recv(1)):
            c.sendall(b)
        c.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    cl = socket.create_connection(srv.getsockname())
    cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        cl.sendall(b"x")
        cl.recv(1)
        xs.append(time.perf_counter() - t0)
    cl.close()
    t.join(1)
    srv.close()
    return median(xs)


def cli_commands(kind, srv, work, aws):
    """The checks an operator runs today, as (label, argv, env)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work.dir}
    if kind == "filesystem":
        return [("findmnt -T", ["findmnt", "-T", work.fsdir], env)]
    if kind == "nfs":
        return [
            ("showmount -e", ["showmount", "-e", "127.0.0.1"], env),
            ("rpcinfo -p", ["rpcinfo", "-p", "127.0.0.1"], env),
            ("nfs-ls", ["nfs-ls", f"nfs://127.0.0.1{srv['nfs_share']}"], env),
        ]
    if kind == "smb":
        return [("smbclient -c ls", ["smbclient", f"//127.0.0.1/share", "-p", str(SMB_PORT),
                                     "-A", work.smb_auth, "-c", "ls"], env)]
    if kind == "s3":
        ak, sk = srv["s3_key"]
        e = dict(env, AWS_ACCESS_KEY_ID=ak, AWS_SECRET_ACCESS_KEY=sk, AWS_CONFIG_FILE="/dev/null",
                 AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
        return [("aws s3api head-bucket", [aws, "s3api", "head-bucket", "--bucket", "backups",
                                           "--endpoint-url", srv["s3_endpoint"], "--region", "us-east-1"], e)]
    if kind == "hdfs":
        e = dict(env, HADOOP_USER_NAME=HDFS_USER)
        return [("hdfs dfs -ls", work.hadoop("-ls", HDFS_DIR), e)]
    raise ValueError(kind)


def bench_latency(srv, work, runs, aws, results):
    rtt = loopback_rtt()
    results["loopback_rtt"] = rtt
    rows = []
    for kind in ("filesystem", "nfs", "smb", "s3", "hdfs"):
        cfg = config(work, f"lat-{kind}", "http://127.0.0.1:9", source(kind, "one", srv, work))
        env = agent_env(work)
        argv = [AGENT, "--config", cfg, "probe", "--json"]
        clis = cli_commands(kind, srv, work, aws)
        timed(argv, env)  # warm caches, sessions on the servers
        for _, c, e in clis:
            timed(c, e)
        wall, inner, layers, cli = [], [], {}, {label: [] for label, _, _ in clis}
        # Interleaved, so that both see the same load on the shared machine.
        for _ in range(runs):
            dt, r = timed(argv, env)
            rep = json.loads(r.stdout)[0]
            if rep["failure"] is not None:
                raise RuntimeError(f"{kind} probe failed: {rep['failure']}")
            wall.append(dt)
            inner.append(rep["duration"])
            for layer in rep["layers"]:
                layers.setdefault(layer["layer"], []).append(layer["duration"])
            for label, c, e in clis:
                cli[label].append(timed(c, e)[0])
        floor = ROUND_TRIPS[kind] * rtt
        row = {
            "kind": kind,
            "agent_wall": median(wall),
            "agent_probe": median(inner),
            "layers": {k: median(v) for k, v in layers.items()},
            "cli": {k: median(v) for k, v in cli.items()},
            "round_trips": ROUND_TRIPS[kind],
            "floor": floor,
        }
        rows.append(row)
        say(f"latency {kind}: agent {ms(row['agent_wall'])} (probe {ms(row['agent_probe'])})")
    # What any run of the binary costs: exec, config load, runtime, no probe.
    base_cfg = config(work, "lat-none", "http://127.0.0.1:9", "")
    base = [timed([AGENT, "--config", base_cfg, "validate"], agent_env(work))[0] for _ in range(runs)]
    results["process_floor"] = median(base)
    results["latency"] = rows


def print_latency(results):
    print(f"\nLoopback TCP round trip (median, Python ping-pong): {results['loopback_rtt'] * 1e6:.0f} µs; "
          f"`hbr-source-agent validate` with no sources (exec + config + exit): "
          f"{ms(results['process_floor'])}\n")
    print("| kind | agent `probe` (process) | agent probe itself | operator CLI | CLI median | CLI ÷ agent | round trips | floor | probe ÷ floor |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in results["latency"]:
        floor = f"{r['floor'] * 1e6:.0f} µs" if r["floor"] else "—"
        over = f"{r['agent_probe'] / r['floor']:.0f}×" if r["floor"] else "—"
        for i, (label, t) in enumerate(r["cli"].items()):
            head = [r["kind"], ms(r["agent_wall"]), ms(r["agent_probe"])] if i == 0 else ["", "", ""]
            tail = [str(r["round_trips"]), floor, over] if i == 0 else ["", "", ""]
            cells = head + [f"`{label}`", ms(t), f"{t / r['agent_wall']:.1f}×"] + tail
            print("| " + " | ".join(cells) + " |")
    print("\nPer layer (median):\n")
    print("| kind | " + " | ".join(["resolve", "connect", "handshake", "auth", "access"]) + " |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["latency"]:
        cells = [ms(r["layers"][k]) if k in r["layers"] else "—"
                 for k in ("resolve", "connect", "handshake", "auth", "access")]
        print(f"| {r['kind']} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------- 2. scale


def bench_scale(srv, work, results, concurrencies, n_probe, n_register, rate_limit, writes):
    out = {}
    # 10,000 sources of every kind for validate (offline); all filesystem for plan, whose
    # probes then cost little, so that the time is the agent's own.
    kinds = ["filesystem", "nfs", "smb", "s3", "hdfs"]
    mixed = "".join(source(kinds[i % 5], f"src{i:05}", srv, work) for i in range(10_000))
    cfg = config(work, "scale-validate", "http://127.0.0.1:9", mixed)
    env = agent_env(work)
    runs = [measured([AGENT, "--config", cfg, "validate"], env) for _ in range(5)]
    out["validate"] = (median([r[0] for r in runs]), max(r[1] for r in runs))
    fake = Fake()
    fs = "".join(source("filesystem", f"src{i:05}", srv, work) for i in range(10_000))
    cfg = config(work, "scale-plan", fake.endpoint, fs, concurrency=16)
    runs = [measured([AGENT, "--config", cfg, "plan"], env, ok=(2,)) for _ in range(3)]
    out["plan"] = (median([r[0] for r in runs]), max(r[1] for r in runs))
    fake.close()
    say(f"scale: validate {out['validate']}, plan {out['plan']}")

    # 1,000 probes against the real servers, a quarter of each network kind.
    net = ["nfs", "smb", "s3", "hdfs"]
    srcs = "".join(source(net[i % 4], f"p{i:04}", srv, work) for i in range(n_probe))
    single = {r["kind"]: r["agent_probe"] for r in results.get("latency", [])}
    mean_single = statistics.mean(single[k] for k in net) if single else None
    out["probe"] = []
    for c in concurrencies:
        cfg = config(work, f"scale-probe-{c}", "http://127.0.0.1:9", srcs, concurrency=c, timeout="60s")
        dt, mib, r = measured([AGENT, "--config", cfg, "probe", "--json"], env, ok=(0, 1))
        reps = json.loads(r.stdout)
        failed = {}
        for rep in reps:
            if rep["failure"]:
                failed[rep["failure"]["code"]] = failed.get(rep["failure"]["code"], 0) + 1
        target = math.ceil(n_probe / c) * mean_single * 1.5 if mean_single else None
        out["probe"].append({"concurrency": c, "wall": dt, "peak_mib": mib, "failed": failed,
                             "target": target})
        say(f"scale: {n_probe} probes at {c}: {dt:.2f} s, {mib:.0f} MiB, failed {failed}")
    out["probe_single_mean"] = mean_single
    out["probe_n"] = n_probe

    # Registering against a slow, rate-limited HBR.
    if n_register <= 0:
        results["scale"] = out
        return
    fs = "".join(source("filesystem", f"r{i:04}", srv, work) for i in range(n_register))
    out["register"] = []
    for w in writes:
        fake = Fake(latency_ms=50, rate_limit=rate_limit)
        cfg = config(work, f"scale-register-{w}", fake.endpoint, fs, concurrency=16, writes=w)
        dt, mib, r = measured([AGENT, "--config", cfg, "apply"], env)
        adds = [e for e in fake.events if e[1] == "AddDataSource" and e[2] == "200"]
        throttled = [e for e in fake.events if e[3].startswith("Throttling")]
        calls = len([e for e in fake.events if e[2] == "200"])
        fake.close()
        reg = {
            "writes": w, "n": n_register, "wall": dt, "peak_mib": mib, "adds": len(adds),
            "throttled": len(throttled), "rate_limit": rate_limit, "latency": 0.05,
            # The limiter's bucket holds one second's worth: the first `rate_limit` calls are free.
            "rate_floor": max(0, calls - rate_limit) / rate_limit,
            "serial_floor": calls * 0.05 / w,
        }
        out["register"].append(reg)
        say(f"scale: register {reg}")
    results["scale"] = out


def print_scale(results):
    s = results["scale"]
    print("\n| 10,000 sources | wall (median) | peak RSS | target |")
    print("|---|---:|---:|---|")
    print(f"| `validate` (2,000 of each kind) | {ms(s['validate'][0])} | {s['validate'][1]:.0f} MiB | < 1 s, < 100 MB |")
    print(f"| `plan` (filesystem, fake HBR) | {ms(s['plan'][0])} | {s['plan'][1]:.0f} MiB | < 1 s, < 100 MB |")
    single = s["probe_single_mean"]
    if s["probe"]:
        print(f"\nProbing {s['probe_n']} sources (a quarter each nfs, smb, s3, hdfs) against the real servers; "
              f"single-probe latency = mean of the four medians above = {ms(single) if single else '?'}:\n")
        print(f"| probe_concurrency | wall | peak RSS | failed | target ceil({s['probe_n']}/c) × single × 1.5 |")
        print("|---:|---:|---:|---|---:|")
        for p in s["probe"]:
            failed = ", ".join(f"{k} {v}" for k, v in p["failed"].items()) or "none"
            print(f"| {p['concurrency']} | {ms(p['wall'])} | {p['peak_mib']:.0f} MiB | {failed} | "
                  f"{ms(p['target']) if p['target'] else '?'} |")
    regs = s.get("register")
    if not regs:
        return
    r = regs[0]
    print(f"\nRegistering {r['n']} sources (`apply`) against the fake HBR with {r['latency'] * 1000:.0f} ms latency "
          f"and a limit of {r['rate_limit']} requests/s:\n")
    print("| write_concurrency | wall | peak RSS | AddDataSource | throttled answers | rate-limit floor | latency floor (calls × latency ÷ writes) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in regs:
        print(f"| {r['writes']} | {ms(r['wall'])} | {r['peak_mib']:.0f} MiB | {r['adds']} | {r['throttled']} | "
              f"{ms(r['rate_floor'])} | {ms(r['serial_floor'])} |")


# ---------------------------------------------------------------- 3. reaction


def bench_reaction(srv, work, results, edits):
    fake = Fake()
    name = "react"
    make = lambda i: config(work, name, fake.endpoint,
                            source("filesystem", "edited", srv, work, f'connection_info = {{ bench_edit = "{i}" }}'))
    cfg = make(0)
    d = Daemon(work, cfg, name)
    d.wait_ready()
    lat = []
    for i in range(1, edits + 1):
        time.sleep(0.3)  # let the previous pass settle
        start = len(fake.events)
        t0 = time.time()
        make(i)  # rewritten in place, as `echo >` or an editor without backup would
        _, ev = fake.wait(lambda e: e[1] == "UpdateDataSource" and e[2] == "200", start, 10)
        if ev is None:
            d.stop()
            fake.close()
            raise RuntimeError(f"edit {i}: no UpdateDataSource within 10 s")
        lat.append(ev[0] - t0)
    d.stop()
    fake.close()
    results["reaction"] = {"edits": edits, "p50": median(lat), "p99": pct(lat, 99),
                           "min": min(lat), "max": max(lat)}
    say(f"reaction: {results['reaction']}")


def print_reaction(results):
    r = results["reaction"]
    print(f"\n| edits | p50 | p99 | min | max | target |")
    print("|---:|---:|---:|---:|---:|---|")
    print(f"| {r['edits']} | {ms(r['p50'])} | {ms(r['p99'])} | {ms(r['min'])} | {ms(r['max'])} | p50 < 500 ms |")


# ---------------------------------------------------------------- 4. footprint


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    switches = {}  # per thread: a thread that ends between two samples must not count
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches[tid] = switches.get(tid, 0) + int(line.split()[1])
        except FileNotFoundError:
            pass
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    return ticks, switches, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]), int(status["Threads"])


def bench_footprint(srv, work, results, idle_s):
    out = {}
    size = os.path.getsize(AGENT)
    stripped = os.path.join(work.dir, "agent.stripped")
    subprocess.run(["strip", "-o", stripped, AGENT], check=True)
    out["binary"] = size
    out["binary_stripped"] = os.path.getsize(stripped)
    fake = Fake()
    fs = "".join(source("filesystem", f"idle{i:03}", srv, work) for i in range(100))
    cfg = config(work, "idle", fake.endpoint, fs)
    cold = Daemon(work, cfg, "idle-cold")
    out["cold_ready"] = cold.wait_ready()  # empty state: 100 AddDataSource
    cold.stop()
    warm = Daemon(work, cfg, "idle-warm")
    out["warm_ready"] = warm.wait_ready()  # all in sync
    time.sleep(2)
    hz = os.sysconf("SC_CLK_TCK")
    t0, s0, _, _, _ = proc_sample(warm.p.pid)
    w0 = time.monotonic()
    time.sleep(idle_s)
    t1, s1, rss, hwm, threads = proc_sample(warm.p.pid)
    dt = time.monotonic() - w0
    warm.stop()
    fake.close()
    woke = sum(n - s0.get(tid, 0) for tid, n in s1.items())
    out.update({"idle_s": dt, "cpu_pct": (t1 - t0) / hz / dt * 100, "wakeups_per_s": woke / dt,
                "rss_mib": rss / 1024, "hwm_mib": hwm / 1024, "threads": threads})
    say(f"footprint: {out}")
    results["footprint"] = out


def print_footprint(results):
    f = results["footprint"]
    print("\n| measure | value | target |")
    print("|---|---:|---|")
    print(f"| binary (release, as built) | {f['binary'] / 2**20:.1f} MiB | |")
    print(f"| binary stripped | {f['binary_stripped'] / 2**20:.1f} MiB | |")
    print(f"| cold start to READY=1, 100 sources, empty state (100 AddDataSource) | {ms(f['cold_ready'])} | |")
    print(f"| start to READY=1, 100 sources in sync | {ms(f['warm_ready'])} | |")
    print(f"| idle RSS, 100 sources | {f['rss_mib']:.1f} MiB (peak {f['hwm_mib']:.1f}) | < 30 MB |")
    print(f"| idle CPU over {f['idle_s']:.0f} s | {f['cpu_pct']:.3f} % | < 0.1 % |")
    print(f"| wake-ups (context switches, all {f['threads']} threads) | {f['wakeups_per_s']:.2f} /s | |")


# ---------------------------------------------------------------- main


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {os.uname().release}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21, help="runs per latency case (median)")
    ap.add_argument("--only", default="latency,scale,reaction,footprint")
    ap.add_argument("--concurrency", default="4,16,64", help="probe_concurrency values for scale; none: skip")
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--register", type=int, default=1000, help="sources to register; 0: skip")
    ap.add_argument("--rate-limit", type=int, default=50, help="fake HBR requests per second")
    ap.add_argument("--writes", default="1,4,8", help="write_concurrency values for registering")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args()
    only = set(a.only.split(","))
    for b in (AGENT, SMB_CHILD, HELPER):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} is missing: run bench/run.sh (it builds the release binaries)")
    srv = servers_up()
    aws = awscli() if "latency" in only else None
    work = Work()
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        if "latency" in only:
            bench_latency(srv, work, a.runs, aws, results)
        if "scale" in only:
            bench_scale(srv, work, results, [int(c) for c in a.concurrency.split(",") if c.isdigit()],
                        a.probes, a.register, a.rate_limit,
                        [int(w) for w in a.writes.split(",") if w.isdigit()])
        if "reaction" in only:
            bench_reaction(srv, work, results, a.edits)
        if "footprint" in only:
            bench_footprint(srv, work, results, a.idle)
    finally:
        work.cleanup()
    print(f"Machine: {results['machine']}; run {results['started']}")
    if "latency" in results:
        print_latency(results)
    if "scale" in results:
        print_scale(results)
    if "reaction" in results:
        print_reaction(results)
    if "footprint" in results:
        print_footprint(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
