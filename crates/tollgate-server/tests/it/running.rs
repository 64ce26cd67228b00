//! Starting `tollgate serve` on a free port and talking to it over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running server; dropping it kills it.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: mpsc::Receiver<String>,
    /// The gRPC (Envoy rate limit service) address, when `[envoy]` is configured.
    pub grpc: Option<String>,
    /// The admin listener's base URL, when `server.admin_listen` is set.
    pub admin: Option<String>,
    /// The "tollgate is serving" log line.
    pub serving: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `args` and `env` on an ephemeral port (`--port 0`), and
/// waits for its "serving" line to learn the port.
pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--port", "0"]).args(args);
    for var in [
        "RATE_LIMITER_ALGORITHM",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_DB",
        "PORT",
        "TOLLGATE_CONFIG",
        "TOLLGATE_STORE_URL",
        "TOLLGATE_LISTEN",
        "TOLLGATE_ADMIN_TOKEN",
        "TOLLGATE_KEY_PREFIX",
        "MASTER_NODE",
        "TOLLGATE_LOG",
        "TOLLGATE_ENVOY_LISTEN",
        "TOLLGATE_ENVOY_CONFIG_DIR",
        "TOLLGATE_ENVOY_SHADOW_MODE",
        "TOLLGATE_WORKERS",
        "TOLLGATE_ADMIN_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tollgate binary");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => {
                if let Some(addr) = line.split("listen=").nth(1) {
                    let addr = addr
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    // Another listener's base URL, unless the line says "(off)".
                    let other = |field: &str| {
                        line.split(field)
                            .nth(1)
                            .and_then(|a| a.split_whitespace().next())
                            .filter(|a| !a.starts_with('('))
                            .map(|a| format!("http://{a}"))
                    };
                    let (grpc, admin) = (other("grpc_listen="), other("admin_listen="));
                    return Server {
                        child,
                        base: format!("http://{addr}"),
                        log: rx,
                        grpc,
                        admin,
                        serving: line,
                    };
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start: {}", seen.join("\n"));
            }
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("http client")
}

/// The server's `GET /metrics` text.
pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}
