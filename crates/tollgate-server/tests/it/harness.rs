//! What the flood and chaos tests share: a lean keep-alive HTTP/1.1 client (so the
//! load generator costs the 2-core machine little), a RESP client for Redis admin
//! commands, private `redis-server` processes and a replicated cluster, resident
//! memory read from `/proc`, and a seeded generator.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// SplitMix64: seeded, so a failing run can be repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An environment variable read as a number, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A configuration file in a fresh temporary directory, removed with it when
/// dropped (keep it as long as a server may read it).
pub struct ConfigFile(PathBuf);

impl std::ops::Deref for ConfigFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes `text` as `tollgate.toml` in a fresh temporary directory.
pub fn write_config(name: &str, text: &str) -> ConfigFile {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, text).expect("write config");
    ConfigFile(path)
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a VmRSS/VmHWM line")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One keep-alive HTTP/1.1 connection, written by hand: a request is a few bytes
/// out and the answer's status and body back.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    host: String,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl HttpConn {
    /// Connects to `base` (`http://host:port`).
    pub async fn connect(base: &str) -> std::io::Result<HttpConn> {
        let host = base.trim_start_matches("http://").to_owned();
        let stream = TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufReader::with_capacity(16 * 1024, stream),
            host,
        })
    }

    /// Sends one request and reads its answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host).as_bytes(),
        );
        for (k, v) in headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if !body.is_empty() || method == "POST" {
            out.extend_from_slice(
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        self.stream.get_mut().write_all(&out).await?;

        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("status line {line:?}")))?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("the headers ended early"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(|_| bad("content-length"))?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok(Answer { status, body })
    }
}

/// A RESP value, as much of it as the tests read.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Error(s) => s.clone(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }
}

/// A plain Redis connection for admin commands (the tests never decide through it).
pub struct RedisConn {
    stream: BufReader<TcpStream>,
}

impl RedisConn {
    pub async fn connect(port: u16) -> std::io::Result<RedisConn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(RedisConn {
            stream: BufReader::new(stream),
        })
    }

    /// Sends several commands at once, then reads their answers.
    pub async fn pipeline(&mut self, commands: &[Vec<String>]) -> std::io::Result<Vec<Resp>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.get_mut().write_all(&out).await?;
        let mut answers = Vec::with_capacity(commands.len());
        for _ in commands {
            answers.push(self.read().await?);
        }
        Ok(answers)
    }

    pub async fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let mut answers = self.pipeline(&[args]).await?;
        Ok(answers.remove(0))
    }

    fn read(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Resp>> + Send + '_>>
    {
        Box::pin(async move {
            let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            let l = line.trim_end_matches("\r\n");
            let (kind, rest) = l.split_at(1);
            let num = || rest.parse::<i64>().map_err(|_| bad(format!("RESP {l:?}")));
            Ok(match kind {
                "+" => Resp::Simple(rest.to_owned()),
                "-" => Resp::Error(rest.to_owned()),
                ":" => Resp::Int(num()?),
                "$" => {
                    let n = num()?;
                    if n < 0 {
                        Resp::Bulk(None)
                    } else {
                        let mut b = vec![0; n as usize + 2];
                        self.stream.read_exact(&mut b).await?;
                        b.truncate(n as usize);
                        Resp::Bulk(Some(b))
                    }
                }
                "*" => {
                    let n = num()?;
                    let mut items = Vec::new();
                    for _ in 0..n.max(0) {
                        items.push(self.read().await?);
                    }
                    Resp::Array(items)
                }
                _ => return Err(bad(format!("RESP {l:?}"))),
            })
        })
    }

    /// Every key matching `pattern`, by SCAN.
    pub async fn scan(&mut self, pattern: &str) -> std::io::Result<Vec<String>> {
        let mut cursor = "0".to_owned();
        let mut keys = Vec::new();
        loop {
            let r = self
                .cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
                .await?;
            let Resp::Array(parts) = r else {
                panic!("SCAN answered {r:?}");
            };
            cursor = parts[0].text();
            if let Resp::Array(found) = &parts[1] {
                keys.extend(found.iter().map(Resp::text));
            }
            if cursor == "0" {
                return Ok(keys);
            }
        }
    }
}

/// Waits until a TCP port accepts connections.
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_command(port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// A private redis-server (never the shared one on 6379); dropping it stops it.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            child: None,
            port: free_port(),
        };
        // The free port may be taken by another test before redis binds it.
        for _ in 0..5 {
            if r.try_start() {
                return r;
            }
            r.port = free_port();
        }
        panic!("redis-server did not start on a free port");
    }

    /// Starts one on `port`, chosen before (a server told to use it while it was
    /// still down, say).
    pub fn start_on(port: u16) -> PrivateRedis {
        let mut r = PrivateRedis { child: None, port };
        r.restart();
        r
    }

    /// Starts redis-server on its port; false when it exits (the port is taken) or
    /// does not answer within 5 s.
    fn try_start(&mut self) -> bool {
        self.kill();
        let mut child = redis_command(self.port, &[])
            .spawn()
            .expect("redis-server on PATH");
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if child.try_wait().ok().flatten().is_none() {
                    self.child = Some(child);
                    return true;
                }
                return false;
            }
            if child.try_wait().ok().flatten().is_some()
                || started.elapsed() > Duration::from_secs(5)
            {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it (again) on its port, empty, and waits until it accepts.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = redis_command(self.port, &[])
                .spawn()
                .expect("redis-server on PATH");
            self.child = Some(child);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(c) = self.child.as_mut()
                    && c.try_wait().ok().flatten().is_some()
                {
                    break; // the port was not free yet
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends it `signal`: `STOP` freezes it (connections stay open, nothing is
    /// answered, as in a network partition), `CONT` thaws it.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters with one replica each, on free loopback ports; dropping it stops
/// every node and removes their files.
pub struct ReplicatedCluster {
    pub nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl Drop for ReplicatedCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let port = free_port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair for a cluster node");
}

fn cluster_node(dir: &std::path::Path, port: u16) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).expect("node dir");
    redis_command(
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            // A replica that never finished its first sync cannot take over; the
            // default waits 5 s before a diskless sync.
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-config-file",
            "nodes.conf",
            "--dir",
            node_dir.to_str().expect("utf-8 dir"),
        ],
    )
    .spawn()
    .expect("redis-server on PATH")
}

impl ReplicatedCluster {
    /// Starts the node on `port` again (it rejoins from its nodes.conf, as a replica
    /// of whoever took its slots) and waits until every node says the cluster is ok
    /// and knows three replicas again.
    pub fn restart(&mut self, port: u16) {
        let slot = self.nodes.iter_mut().find(|(p, _)| *p == port);
        let Some((_, slot)) = slot else {
            panic!("no node on port {port}");
        };
        *slot = Some(cluster_node(&self.dir, port));
        wait_for_port(port, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(30);
        let ports = self.alive();
        while !ports.iter().all(|&p| cluster_ok(p) && replicas_known(p)) {
            assert!(
                Instant::now() < deadline,
                "node {port} did not rejoin: {}",
                cli(ports[0], &["CLUSTER", "NODES"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts six nodes and joins them: three masters, three replicas, a 1 s node
    /// timeout so a replica takes over soon after its master dies.
    pub fn start() -> ReplicatedCluster {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-chaos-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = ReplicatedCluster {
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        let mut ports = Vec::new();
        while ports.len() < 6 {
            // A free port can be taken by another test between the check and the
            // bind: then this node exits, and another port is tried.
            let port = cluster_port(&ports);
            let mut child = cluster_node(&dir, port);
            let started = Instant::now();
            let up = loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break child.try_wait().ok().flatten().is_none();
                }
                if child.try_wait().ok().flatten().is_some()
                    || started.elapsed() > Duration::from_secs(10)
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                ports.push(port);
                cluster.nodes.push((port, Some(child)));
            } else {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for p in &ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ports.iter().all(|&p| cluster_ok(p) && replicas_known(p)) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis+cluster://` URL of the cluster.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `kill -9` the node on `port`.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut c) = child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The ports of the nodes still running.
    pub fn alive(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }
}

/// `redis-cli -p port args...`, its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cluster_ok(port: u16) -> bool {
    cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
}

/// Three replicas known and not failing, as the node on `port` sees it, and the
/// node itself in sync if it is a replica.
fn replicas_known(port: u16) -> bool {
    let known = cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter(|l| l.contains("slave") && !l.contains("fail"))
        .count()
        == 3;
    let info = cli(port, &["INFO", "replication"]);
    known && (info.contains("role:master") || info.contains("master_link_status:up"))
}

/// The port of the master serving `slot`, as the node on `ask` sees it.
pub fn master_of_slot(ask: u16, slot: u16) -> Option<u16> {
    for line in cli(ask, &["CLUSTER", "NODES"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let serves = f[8..].iter().any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => a <= slot && slot <= b,
                _ => false,
            }
        });
        if serves {
            return f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
        }
    }
    None
}

/// True when every live node says the cluster is ok.
pub fn cluster_healthy(ports: &[u16]) -> bool {
    ports.iter().all(|&p| cluster_ok(p))
}
