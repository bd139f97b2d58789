//! `konvertd`: the Konvert gateway daemon. Argument handling, logging and
//! signals only; the work is in `konvert_gateway::daemon`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use konvert_gateway::config::LogFormat;
use konvert_gateway::daemon::{self, Control, Node};
use tokio::signal::unix::{signal, SignalKind};

/// Konvert gateway daemon: delivers sealed envelopes between ministries over QUIC.
#[derive(Debug, Parser)]
#[command(
    name = "konvertd",
    version,
    after_help = "Example:\n  konvertd --config /etc/konvert/konvert.toml\n\n\
        Signals: SIGTERM/SIGINT stop gracefully (finish in-flight work, sync the store, close QUIC);\n\
        SIGHUP reloads peers and profiles. Make a configuration with `konvertctl init`.\n\n\
        Under systemd (Type=notify) it reports READY=1 once the QUIC endpoint and the API socket are up,\n\
        RELOADING=1 around a reload, STOPPING=1, and WATCHDOG=1 when WatchdogSec= is set. Key paths in the\n\
        configuration may start with ${CREDENTIALS_DIRECTORY} (LoadCredential=); see docs/OPERATIONS.md.\n\n\
        Exit status:\n  \
        0  stopped on SIGTERM or SIGINT after finishing its work (graceful stop)\n  \
        1  could not start, or stopped on a fatal error: one line on stderr (konvertd: error: ...), also\n     \
        logged, says what (configuration, keys, credentials, store locked or unreadable, address in\n     \
        use); the packaged unit restarts it (Restart=on-failure)\n  \
        2  the arguments are wrong (usage on stderr)\n\
        Killed by systemd's watchdog (no WATCHDOG=1 in WatchdogSec=) it ends by SIGABRT, not a status."
)]
struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE", required_unless_present = "man")]
    config: Option<PathBuf>,
    /// Print the konvertd(8) man page (roff) and exit (for packaging).
    #[arg(long, hide = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        use clap::CommandFactory;
        let mut out = std::io::stdout().lock();
        return match konvert_gateway::docgen::man_page(Args::command(), "8", &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("konvertd: error: cannot write the man page: {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some(config) = args.config else {
        eprintln!("konvertd: error: --config FILE is required");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("konvertd: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("konvertd: error: {e}");
            tracing::error!(error = %e, "konvertd stopped");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KONVERT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run(config: &std::path::Path) -> Result<(), String> {
    // Read the log settings first so that start-up errors are logged as configured.
    if let Ok(text) = std::fs::read_to_string(config) {
        if let Ok(cfg) = konvert_gateway::config::Config::parse(&text, config) {
            init_logging(cfg.log.format, &cfg.log.level);
            let unresolved = cfg.unresolved_credentials();
            if !unresolved.is_empty() {
                return Err(format!(
                    "{}: {} refer to {}, but {} is not set: start konvertd from its systemd unit \
                     (LoadCredential=), or write the key paths out",
                    config.display(),
                    unresolved.join(", "),
                    konvert_gateway::config::CREDENTIALS_PLACEHOLDER,
                    konvert_gateway::config::CREDENTIALS_VAR,
                ));
            }
        }
    }
    init_logging(LogFormat::Text, "info");
    // READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 go to systemd when it set NOTIFY_SOCKET.
    konvert_gateway::systemd::enable();
    let node = Node::start(config).map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(c).await.is_err() || c == Control::Stop {
                break;
            }
        }
    });
    daemon::run(node, rx).await.map_err(|e| e.to_string())
}
