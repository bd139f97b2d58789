//! `konvertd`: the Konvert gateway daemon. Argument handling, logging and
//! signals only; the work is in `konvert_gateway::daemon`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use konvert_gateway::api::{AccessPolicy, ApiLimits, ApiServer};
use konvert_gateway::config::LogFormat;
use konvert_gateway::daemon::{inbound, outbound, service::Service, Node};
use tokio::signal::unix::{signal, SignalKind};

/// Konvert gateway daemon: delivers sealed envelopes between ministries over QUIC.
#[derive(Debug, Parser)]
#[command(
    name = "konvertd",
    version,
    after_help = "Example:\n  konvertd --config /etc/konvert/konvert.toml\n\n\
        Signals: SIGTERM/SIGINT stop gracefully (finish in-flight work, sync the store, close QUIC);\n\
        SIGHUP reloads peers and profiles. Make a configuration with `konvertctl init`."
)]
struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("konvertd: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
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

async fn run(args: Args) -> Result<(), String> {
    // Read the log settings first so that start-up errors are logged as configured.
    if let Ok(text) = std::fs::read_to_string(&args.config) {
        if let Ok(cfg) = konvert_gateway::config::Config::parse(&text, &args.config) {
            init_logging(cfg.log.format, &cfg.log.level);
        }
    }
    init_logging(LogFormat::Text, "info");
    let node = Node::start(&args.config).map_err(|e| e.to_string())?;
    let policy = AccessPolicy::from_names(&node.config.api.users, &node.config.api.groups)
        .map_err(|e| e.to_string())?;
    let limits = ApiLimits {
        max_json_body: node.config.api.max_json_bytes,
        max_upload: node.config.api.max_upload_bytes,
        ..ApiLimits::default()
    };
    let api = ApiServer::bind(
        &node.config.api.socket,
        0o660,
        policy,
        Arc::new(Service(Arc::clone(&node))),
        limits,
    )
    .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api.serve(async move {
        let _ = api_stop.wait_for(|s| *s).await;
    }));
    let accept_task = tokio::spawn(inbound::accept_loop(Arc::clone(&node)));
    let dispatch_task = tokio::spawn(outbound::dispatch(Arc::clone(&node), stop_rx.clone()));
    tracing::info!(
        authority = %node.keys.authority,
        quic = %node.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api = %node.config.api.socket.display(),
        "konvertd ready"
    );

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match node.reload() {
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "reload refused; keeping the previous configuration"),
            },
        }
    }
    tracing::info!("shutting down: finishing in-flight work");
    let _ = stop_tx.send(true);
    node.endpoint.refuse_new_connections();
    let _ = api_task.await;
    let _ = dispatch_task.await;
    // Let envelopes being received finish and their receipts go out.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.inbound_in_flight.load(std::sync::atomic::Ordering::Acquire) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.endpoint.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), node.endpoint.wait_idle()).await;
    accept_task.abort();
    if let Err(e) = node.store.sync() {
        tracing::error!(error = %e, "final store sync failed");
    }
    tracing::info!("stopped");
    Ok(())
}
