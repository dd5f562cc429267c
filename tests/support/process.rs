//! Runs the real `openai-admin-gateway` binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{ADMIN_KEY, ADMIN_KEY_ENV};

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
    let out = Captured::default();
    let err = Captured::default();
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

/// `out`'s exit status, stdout and stderr in one text, for failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Bytes read from a child's pipe by a [`drain`] thread.
pub type Captured = Arc<Mutex<Vec<u8>>>;

/// What `captured` holds so far, as (lossy) UTF-8.
pub fn text_of(captured: &Captured) -> String {
    String::from_utf8_lossy(&captured.lock().unwrap()).into_owned()
}

/// Copies everything `from` yields into `into` on a new thread, until end of file.
pub fn drain(mut from: impl Read + Send + 'static, into: Captured) -> JoinHandle<()> {
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

/// Polls `child` every 20 ms for up to `limit`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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

/// The binary serving in the background: stdout and stderr captured, signals sent to its pid
/// with `kill`. Dropping it kills the process (by its own pid).
pub struct GatewayProcess {
    child: Child,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl GatewayProcess {
    /// Writes `toml` (a test config, which starts with `[server]`) with `log_format = "json"`
    /// added to `[server]` to `gateway.toml` in `dir`, runs the binary on it with the admin
    /// key and `RUST_LOG=rust_log`, and returns once `addr` and `admin` accept connections.
    pub async fn spawn_json(
        dir: &TempDir,
        toml: &str,
        rust_log: &str,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> GatewayProcess {
        assert!(toml.starts_with("[server]\n"), "unexpected config:\n{toml}");
        let toml = toml.replacen("[server]\n", "[server]\nlog_format = \"json\"\n", 1);
        let path = dir.write("gateway.toml", &toml);
        let env = [(ADMIN_KEY_ENV, ADMIN_KEY), ("RUST_LOG", rust_log)];
        let mut gw = Self::spawn_args(&["--config", config_arg(&path)], &env);
        gw.wait_listening(addr).await;
        gw.wait_listening(admin).await;
        gw
    }

    /// Starts `openai-admin-gateway --config PATH` with `env` added.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        Self::spawn_args(&["--config", config_arg(config)], env)
    }

    /// Like [`GatewayProcess::spawn`], logging at `RUST_LOG=info` unless `env` sets it.
    pub fn spawn_logged(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let mut cmd = Self::command(&["--config", config_arg(config)]);
        cmd.env("RUST_LOG", "info");
        cmd.envs(env.iter().copied());
        Self::start(cmd)
    }

    /// Starts the binary with `args` and `env` added (`GATEWAY_CONFIG` cleared unless given).
    pub fn spawn_args(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut cmd = Self::command(args);
        cmd.envs(env.iter().copied());
        Self::start(cmd)
    }

    /// The command the `spawn*` functions run: the binary with `args`, stdin closed,
    /// `GATEWAY_CONFIG` cleared. For tests that need more than added variables; start it
    /// with [`GatewayProcess::start`].
    pub fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .env_remove("GATEWAY_CONFIG");
        cmd
    }

    /// Starts `cmd` with its stdout and stderr captured.
    pub fn start(mut cmd: Command) -> GatewayProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway binary");
        let stdout = Captured::default();
        let stderr = Captured::default();
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Fails the test if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "the gateway exited with {status}; stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Sends `SIG{signal}` (e.g. "HUP") to this process with the `kill` command, failing the
    /// test if the process has already exited.
    #[track_caller]
    pub fn signal(&mut self, signal: &str) {
        self.assert_running();
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {pid} failed"
        );
    }

    /// Waits (up to 30 s) until `addr` accepts TCP connections (the process is serving).
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the gateway never listened on {addr}; stderr:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `secs`) until stderr holds a line for which `pred` is true, failing the
    /// test if the process exits first.
    pub async fn wait_for_line(&mut self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !self.stderr_text().lines().any(&pred) {
            self.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no log line {what} within {secs}s; stderr:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM and waits (up to `secs`) for the exit status.
    pub fn terminate(&mut self, secs: u64) -> ExitStatus {
        self.stop_with("TERM", secs)
    }

    /// Sends `SIG{signal}` (e.g. "INT") and waits (up to `secs`) for the exit status and for
    /// stdout and stderr to close.
    pub fn stop_with(&mut self, signal: &str, secs: u64) -> ExitStatus {
        self.signal(signal);
        self.wait_exit(secs)
    }

    /// Waits (up to `secs`) for the exit status, and for stdout and stderr to close, after a
    /// signal sent earlier (e.g. with [`GatewayProcess::signal`]).
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(secs)).unwrap_or_else(|| {
                panic!(
                    "the gateway did not exit within {secs}s; stderr:\n{}",
                    self.stderr_text()
                )
            });
        self.exited = Some(status);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    pub fn stdout_text(&self) -> String {
        text_of(&self.stdout)
    }
}

fn config_arg(config: &Path) -> &str {
    config.to_str().expect("utf-8 temp path")
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
