//! The Prometheus text format (version 0.0.4): the one writer behind
//! `GET /metrics`, for the node's gauges and the archiver's counters alike.

use std::fmt::{Display, Write};

/// A metric's type line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// Accumulates metrics; every sample carries the same base labels.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    /// The inside of `{...}` shared by every sample (`scope="pg",name="a"`), or empty.
    labels: String,
}

impl Writer {
    /// `labels`: the inside of `{...}`, already escaped (see [`escape`]), or empty.
    pub fn new(labels: &str) -> Writer {
        Writer { out: String::new(), labels: labels.to_owned() }
    }

    /// `# HELP` and `# TYPE` lines, then one sample with the base labels.
    pub fn metric(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    /// `# HELP` and `# TYPE` lines for the samples that follow.
    pub fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {}\n", kind.as_str());
    }

    /// One sample: the base labels, then `extra` (values escaped here).
    pub fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: impl Display) {
        let mut labels = self.labels.clone();
        for (k, v) in extra {
            if !labels.is_empty() {
                labels.push(',');
            }
            let _ = write!(labels, "{k}=\"{}\"", escape(v));
        }
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value: backslash, quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut w = Writer::new("scope=\"pg\"");
        w.metric("a_total", Kind::Counter, "Things.", 7.0);
        w.header("lag", Kind::Gauge, "Lag.");
        w.sample("lag", &[("application_name", "b\"1")], 10u64);
        assert_eq!(
            w.finish(),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{scope=\"pg\"} 7\n\
             # HELP lag Lag.\n# TYPE lag gauge\nlag{scope=\"pg\",application_name=\"b\\\"1\"} 10\n"
        );
        let mut w = Writer::new("");
        w.metric("up", Kind::Gauge, "Up.", 1.5);
        assert_eq!(w.finish(), "# HELP up Up.\n# TYPE up gauge\nup 1.5\n");
    }
}
