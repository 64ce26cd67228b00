//! `rediss://`: the store talks TLS to a redis-server started with a certificate
//! from a throwaway certificate authority made here with `openssl`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::{Algorithm, Check, Policy, Store};
use tollgate_redis::RedisStore;

use crate::common::prefix;

struct TlsServer {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): the TLS test needs it on PATH"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start(port: u16) -> TlsServer {
    let dir = std::env::temp_dir().join(format!("tollgate-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tollgate test CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e})"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsServer { child, dir }
}

#[tokio::test]
async fn rediss_urls_talk_tls() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let server = start(port);
    let ca = std::fs::read(server.dir.join("ca.crt")).expect("ca.crt");
    let url = format!("rediss://127.0.0.1:{port}/0");

    let store = RedisStore::builder(url.clone())
        .key_prefix(prefix("tls"))
        .timeout(Duration::from_secs(5))
        .tls_root_certificate(ca)
        .connect()
        .await
        .expect("a TLS connection trusting the test CA");
    let p = Policy::new(Algorithm::SlidingWindowLog, 2, Duration::from_secs(10)).expect("policy");
    let check = [Check::new("tls:client", &p)];
    assert!(store.check(&check).await.expect("check").allowed());
    assert!(store.check(&check).await.expect("check").allowed());
    assert!(!store.check(&check).await.expect("check").allowed());

    // Without the CA, the server's certificate is not trusted.
    let untrusted = RedisStore::builder(url)
        .key_prefix(prefix("tls"))
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    assert!(
        untrusted.is_err(),
        "a certificate from an unknown CA was accepted"
    );
}
