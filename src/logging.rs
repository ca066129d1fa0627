//! Logging: `tracing` to stderr, one line per event, text or JSON.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the background log writer alive; drop it (flushes) before exiting.
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

impl LogGuard {
    pub fn flush(self) {}
}

/// Installs the global subscriber. `non_blocking`: a writer thread with a
/// bounded, lossy queue, so that a stalled stderr (a full pipe to conmon)
/// never stalls the supervisor or the forwarding of postgres's log. Init mode
/// (PID 1) logs synchronously: it must not start threads before it has
/// blocked signals, and it logs only a handful of lines.
pub fn init(format: LogFormat, level: &str, non_blocking: bool) -> LogGuard {
    // tokio-postgres logs statements at debug level, role DDL included:
    // keep it at info unless asked for by name.
    let level =
        if level.contains("tokio_postgres") { level.to_owned() } else { format!("{level},tokio_postgres=info") };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = if non_blocking {
        let (w, g) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(16_384)
            .finish(std::io::stderr());
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(w), Some(g))
    } else {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    // A second init (tests, or a CLI command after a failed parse) is harmless.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    LogGuard { _writer: guard }
}

/// Logging settings read straight from the process environment, for use
/// before (or when) the full configuration fails to parse.
pub fn from_env_best_effort() -> (LogFormat, String) {
    let format = match std::env::var("TUSK_LOG_FORMAT").map(|s| s.to_ascii_lowercase()).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let level = std::env::var("TUSK_LOG_LEVEL")
        .ok()
        .filter(|l| EnvFilter::try_new(l).is_ok())
        .unwrap_or_else(|| "info".to_owned());
    (format, level)
}
