//! apiload: a small bounded open-loop HTTP load generator for tusk's REST
//! API (and Patroni's, for comparison). Not part of the `tusk` binary.
//!
//!   cargo build --release --example apiload
//!   target/release/examples/apiload --rate 1000 --duration 10 --method OPTIONS \
//!       http://127.0.0.1:8008/primary [URL...] [--json]
//!
//! Requests go out at a fixed rate (round robin over the URLs) whatever the
//! server does; latencies count from each request's scheduled send time.
//! Prints p50/p90/p99/max, errors, timeouts and the achieved rate per URL;
//! `--json` prints the report as JSON on stdout (the table goes to stderr).
//! Stops by itself after `--duration`, or early on SIGINT/SIGTERM.

mod load;

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Open-loop HTTP load at a fixed rate; latency from the scheduled send time")]
struct Args {
    /// Requests per second over all URLs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// GET, HEAD or OPTIONS.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per request from its send.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    /// Reuse connections (default: one connection per request, like HAProxy checks).
    #[arg(long)]
    keepalive: bool,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Target URLs (http://host:port/path), used round robin.
    #[arg(required = true)]
    urls: Vec<String>,
}

fn main() {
    let a = Args::parse();
    let method = a.method.to_uppercase();
    if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        eprintln!("apiload: --method must be GET, HEAD or OPTIONS");
        std::process::exit(2);
    }
    if !(a.rate > 0.0 && a.duration > 0.0 && a.timeout > 0.0 && a.concurrency > 0) {
        eprintln!("apiload: --rate, --duration, --timeout and --concurrency must be positive");
        std::process::exit(2);
    }
    for u in &a.urls {
        if !u.starts_with("http://") || u.parse::<hyper::Uri>().is_err() {
            eprintln!("apiload: not an http:// URL: {u}");
            std::process::exit(2);
        }
    }
    let spec = load::Spec {
        urls: a.urls,
        method,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        concurrency: a.concurrency,
        timeout: Duration::from_secs_f64(a.timeout),
        keepalive: a.keepalive,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let report = rt.block_on(async {
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        };
        load::run(spec, stop).await
    });
    if a.json {
        eprint!("{}", report.text());
        println!("{}", serde_json::to_string(&report).expect("JSON"));
    } else {
        print!("{}", report.text());
    }
}
