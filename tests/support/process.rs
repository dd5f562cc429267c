//! Runs the real `openai-admin-gateway` binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Path of the binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_openai-admin-gateway");

// === TempDir ===

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("oag-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback address whose port was free a moment ago (bind, read, release).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Runs the binary with `args`, `env` and `stdin` to completion (30 s at most).
pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("GATEWAY_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the gateway binary");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        drain(child.stdout.take().expect("stdout"), out.clone()),
        drain(child.stderr.take().expect("stderr"), err.clone()),
    ];
    let status = wait_timeout(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{BIN} {args:?} did not exit within 30s"));
    for r in readers {
        let _ = r.join();
    }
    let stdout = std::mem::take(&mut *out.lock().unwrap());
    let stderr = std::mem::take(&mut *err.lock().unwrap());
    Output {
        status,
        stdout,
        stderr,
    }
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

// === GatewayProcess ===

/// The binary serving in the background, stdout and stderr captured.
pub struct GatewayProcess {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl GatewayProcess {
    /// Starts `openai-admin-gateway --config PATH` with `env` added.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let config = config.to_str().expect("utf-8 temp path");
        Self::spawn_args(&["--config", config], env)
    }

    /// Starts the binary with `args` and `env` added (`GATEWAY_CONFIG` cleared unless given).
    pub fn spawn_args(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GATEWAY_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the gateway binary");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("stdout"), stdout.clone()),
            drain(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        GatewayProcess {
            child,
            stdout,
            stderr,
            readers,
            exited: None,
        }
    }

    /// Waits until `addr` accepts TCP connections (the process is serving).
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "the gateway exited early with {status}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the gateway never listened on {addr}; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Sends SIGTERM and waits (up to `secs`) for the exit status.
    pub fn terminate(&mut self, secs: u64) -> ExitStatus {
        self.stop_with("TERM", secs)
    }

    /// Sends `SIG{signal}` (e.g. "INT") and waits (up to `secs`) for the exit status.
    pub fn stop_with(&mut self, signal: &str, secs: u64) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {pid} failed"
        );
        let status = wait_timeout(&mut self.child, Duration::from_secs(secs))
            .unwrap_or_else(|| panic!("the gateway did not exit within {secs}s of SIG{signal}"));
        self.exited = Some(status);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
