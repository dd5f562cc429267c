//! The `openai-admin-gateway` binary: CLI, logging, signals, and the main
//! runtime (the workers start their own: see `server`).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openai_admin_gateway::config::LogFormat;
use openai_admin_gateway::secret;
use openai_admin_gateway::server::shutdown::Shutdown;
use openai_admin_gateway::server::{watch, Trigger};
use openai_admin_gateway::telemetry::{self, Telemetry};
use openai_admin_gateway::{check_files, Config, Reloader, Server};
use tracing::{error, info};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// mimalloc: the forwarded path allocates per request (hyper's read
/// buffers, header maps, bodies), and glibc malloc spent about a fifth of
/// the pass-through CPU time on it (`benches/README.md`, profiles).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Configuration problems (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Could not start (bind failed, bad certificate): EX_UNAVAILABLE.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(version, about = "Caching reverse proxy for the OpenAI Admin API")]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_CONFIG",
        default_value = "config/gateway.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration; print every problem and exit non-zero if any.
    CheckConfig,
    /// Read a client key on stdin, print its SHA-256 hex for `key_sha256`.
    HashKey,
    /// Print a fresh random client key and its SHA-256 hex.
    NewKey {
        /// Text put before the random part.
        #[arg(long, default_value = "oag_")]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::HashKey => hash_key(),
        Command::NewKey { prefix } => new_key(&prefix),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("invalid configuration {}:", path.display());
        for p in e.problems() {
            eprintln!("  - {p}");
        }
        ExitCode::from(EX_USAGE)
    })
}

fn check_config(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = check_files(&config) {
        eprintln!("invalid configuration {}:", path.display());
        for p in e.problems() {
            eprintln!("  - {p}");
        }
        return ExitCode::from(EX_USAGE);
    }
    println!(
        "configuration OK: {} client(s), listen {}, admin {}, upstream {}",
        config.clients.len(),
        config.server.listen,
        config.server.admin_listen,
        config.upstream.base_url
    );
    ExitCode::SUCCESS
}

fn hash_key() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    // Drop exactly one trailing newline so `echo KEY | hash-key` works.
    let key = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(&input);
    if key.is_empty() {
        eprintln!("no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", secret::hash_key(key));
    ExitCode::SUCCESS
}

fn new_key(prefix: &str) -> ExitCode {
    match secret::new_key(prefix) {
        Ok(key) => {
            println!("key:        {key}");
            println!("key_sha256: {}", secret::hash_key(&key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot get randomness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Before the logging: the OpenTelemetry layer needs the exporter.
    let telemetry = match Telemetry::start(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot start the trace export: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let _log_guard = init_logging(config.server.log_format, telemetry.as_ref());
    let watch_files = config.server.watch_files;
    // The workers serve clients on runtimes of their own (`server.workers`);
    // this one runs the admin listener, reloads, signals, the file watch,
    // the Redis bus and the writes whose clients left, so one thread is enough.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gateway-main")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(cause = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // Catch every signal before binding: a signal that arrives as soon
        // as the port answers must reload or drain, not kill the process.
        let (shutdown, hup) = match (Shutdown::install(), hangup()) {
            (Ok(s), Ok(h)) => (s, h),
            (Err(e), _) | (_, Err(e)) => {
                error!(cause = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                error!(cause = %e, "cannot start");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        info!(admin = %server.admin_addr(), "admin listener ready");
        tokio::spawn(reload_on_sighup(path.to_path_buf(), server.reloader(), hup));
        // Kept alive until the server stops: dropping it stops the watch.
        let _watch = match watch_files.then(|| watch::spawn(path, server.reloader())) {
            Some(Err(e)) => {
                error!(cause = %e, "cannot watch the config files; reload with SIGHUP");
                None
            }
            Some(Ok(w)) => Some(w),
            None => None,
        };
        match server.run(shutdown.recv()).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(cause = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    });
    // Tasks left (the Redis bus, a blocking file-watch or DNS call) must not
    // keep the process past the end of its grace period.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    // The spans still queued go out now, for at most two seconds (a
    // collector that is down does not hold the exit longer).
    if let Some(t) = telemetry {
        if !t.shutdown(std::time::Duration::from_secs(2)) {
            error!("trace export: not every queued span was sent before exit");
        }
    }
    code
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

fn hangup() -> std::io::Result<Hangup> {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    #[cfg(not(unix))]
    Ok(())
}

/// SIGHUP re-reads the file; an invalid one is logged and ignored.
async fn reload_on_sighup(path: PathBuf, reloader: Reloader, mut hup: Hangup) {
    #[cfg(unix)]
    while hup.recv().await.is_some() {
        info!(path = %path.display(), "SIGHUP: reloading configuration");
        reloader.reload_file(&path, Trigger::Signal).await;
    }
    #[cfg(not(unix))]
    let _ = (path, reloader, &mut hup);
}

fn init_logging(
    format: LogFormat,
    telemetry: Option<&Telemetry>,
) -> tracing_appender::non_blocking::WorkerGuard {
    // Writes go through a bounded channel to a writer thread, so a slow
    // stderr never blocks a runtime worker. Lines are not dropped (lossy =
    // false): under a flood, backpressure beats losing audit lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(65_536)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let lines = match format {
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
        LogFormat::Text => lines.boxed(),
    };
    // RUST_LOG decides the log lines, as before; the spans meant for
    // export (their own target) go only to the OpenTelemetry layer.
    tracing_subscriber::registry()
        .with(lines.with_filter(filter.and(telemetry::not_traces())))
        .with(telemetry::layer(telemetry))
        .init();
    guard
}
