//! The engine of `apiload`: an open-loop HTTP load generator. Requests are
//! scheduled at a fixed rate from the start time (request `i` at
//! `start + i / rate`), independent of how fast answers come; each latency
//! is measured from the request's *scheduled* time, so a slow server cannot
//! hide its stalls by slowing the sender (no coordinated omission). A
//! concurrency cap bounds the connections in flight: requests over the cap
//! wait, and their wait counts in their latency. Everything is bounded: the
//! run ends after its duration (or a stop signal), in-flight requests get
//! their timeout, and whatever is still queued then is counted as unsent.
//!
//! Also used by the integration tests (`#[path]`), which run it in a second
//! process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Targets, used round robin: request `i` goes to `urls[i % len]`.
    pub urls: Vec<String>,
    /// GET, HEAD or OPTIONS.
    pub method: String,
    /// Requests per second, over all URLs.
    pub rate: f64,
    pub duration: Duration,
    /// At most this many requests in flight.
    pub concurrency: usize,
    /// Per request, from the moment it is sent.
    pub timeout: Duration,
    /// Reuse connections; otherwise one connection per request, as HAProxy
    /// health checks do.
    pub keepalive: bool,
}

/// What happened to the requests sent to one URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UrlReport {
    pub url: String,
    /// Requests scheduled within the duration.
    pub scheduled: u64,
    /// Requests that got a complete response.
    pub responses: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Connection refused/reset, protocol errors...
    pub errors: u64,
    /// No complete response within the timeout.
    pub timeouts: u64,
    /// Still waiting for a connection slot when the run ended.
    pub unsent: u64,
    pub first_error: Option<String>,
    /// Latency of the responses, from the scheduled time (ms).
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(skip)]
    latencies_us: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub spec: Option<Spec>,
    pub urls: Vec<UrlReport>,
    /// All URLs together.
    pub total: UrlReport,
    /// From the first scheduled request to the end of the run (s).
    pub elapsed_s: f64,
    /// Responses per second over the scheduled duration.
    pub achieved_rate: f64,
}

enum Outcome {
    Response(u16, Duration),
    Error(String),
    Timeout,
    Unsent,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

impl UrlReport {
    fn add(&mut self, o: &Outcome) {
        self.scheduled += 1;
        match o {
            Outcome::Response(code, lat) => {
                self.responses += 1;
                *self.statuses.entry(*code).or_default() += 1;
                self.latencies_us.push(lat.as_micros() as u64);
            }
            Outcome::Error(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.clone());
            }
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Unsent => self.unsent += 1,
        }
    }

    fn finish(&mut self) {
        self.latencies_us.sort_unstable();
        let l = &self.latencies_us;
        (self.p50_ms, self.p90_ms, self.p99_ms) = (percentile(l, 50.0), percentile(l, 90.0), percentile(l, 99.0));
        self.max_ms = l.last().map_or(0.0, |&m| m as f64 / 1000.0);
    }
}

/// Runs the load until `spec.duration` has passed or `stop` completes.
pub async fn run(spec: Spec, stop: impl Future<Output = ()>) -> Report {
    assert!(!spec.urls.is_empty() && spec.rate > 0.0 && spec.concurrency > 0, "bad load spec");
    let method: Method = spec.method.to_uppercase().parse().expect("HTTP method");
    let uris: Vec<hyper::Uri> = spec.urls.iter().map(|u| u.parse().expect("URL")).collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(spec.timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    if !spec.keepalive {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<_, Empty<Bytes>> = builder.build(connector);
    let slots = Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
    let outcomes: Arc<Mutex<Vec<(usize, Outcome)>>> = Arc::default();
    let period = Duration::from_secs_f64(1.0 / spec.rate);
    let mut tasks = tokio::task::JoinSet::new();

    let start = Instant::now();
    let end = start + spec.duration;
    let count = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let mut i: u64 = 0;
    tokio::pin!(stop);
    let mut stopped_at = None;
    'schedule: loop {
        if i >= count {
            break;
        }
        let next = start + period.mul_f64(i as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut stop => { stopped_at = Some(Instant::now()); break 'schedule; }
        }
        // Catch up with every request due by now (the timer is coarse).
        let now = Instant::now();
        loop {
            let at = start + period.mul_f64(i as f64);
            if at > now || i >= count {
                break;
            }
            let target = (i % uris.len() as u64) as usize;
            let (client, uri, method, slots, outcomes) =
                (client.clone(), uris[target].clone(), method.clone(), slots.clone(), outcomes.clone());
            let timeout = spec.timeout;
            tasks.spawn(async move {
                let outcome = match slots.acquire_owned().await {
                    Err(_) => Outcome::Unsent,
                    Ok(_permit) => {
                        let req =
                            hyper::Request::builder().method(method).uri(uri).body(Empty::new()).expect("request");
                        let exchange = async {
                            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                            let code = resp.status().as_u16();
                            resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?;
                            Ok::<u16, String>(code)
                        };
                        match tokio::time::timeout(timeout, exchange).await {
                            Ok(Ok(code)) => Outcome::Response(code, at.elapsed()),
                            Ok(Err(e)) => Outcome::Error(e),
                            Err(_) => Outcome::Timeout,
                        }
                    }
                };
                outcomes.lock().expect("lock").push((target, outcome));
            });
            i += 1;
        }
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }
    let scheduled_end = stopped_at.unwrap_or_else(|| end.min(Instant::now()));
    // Requests still waiting for a slot will not be sent; in-flight ones get
    // their timeout (plus a margin), then the rest is abandoned. (One yield
    // first: the last batch was spawned but has not asked for a slot yet.)
    tokio::task::yield_now().await;
    slots.close();
    let drain = tokio::time::sleep(spec.timeout + Duration::from_secs(1));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut drain => break,
        }
    }
    let abandoned = tasks.len();
    tasks.abort_all();
    let elapsed = start.elapsed();

    let mut urls: Vec<UrlReport> =
        spec.urls.iter().map(|u| UrlReport { url: u.clone(), ..Default::default() }).collect();
    let mut total = UrlReport { url: "total".into(), ..Default::default() };
    for (target, o) in outcomes.lock().expect("lock").iter() {
        urls[*target].add(o);
        total.add(o);
    }
    // Abandoned tasks (should not happen: every request has a timeout).
    for _ in 0..abandoned {
        total.add(&Outcome::Timeout);
    }
    for u in &mut urls {
        u.finish();
    }
    total.finish();
    let window = scheduled_end.duration_since(start).as_secs_f64().max(1e-9);
    Report {
        achieved_rate: total.responses as f64 / window,
        spec: Some(spec),
        urls,
        total,
        elapsed_s: elapsed.as_secs_f64(),
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.spec {
            out.push_str(&format!(
                "apiload: {} {:.0}/s for {:.1}s over {} URL(s), concurrency {}, timeout {:.1}s, {}\n",
                s.method,
                s.rate,
                s.duration.as_secs_f64(),
                s.urls.len(),
                s.concurrency,
                s.timeout.as_secs_f64(),
                if s.keepalive { "keep-alive" } else { "one connection per request" }
            ));
        }
        out.push_str(&format!(
            "{:<40} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8}  statuses\n",
            "url", "sched", "resp", "errors", "tmout", "unsent", "p50 ms", "p90 ms", "p99 ms", "max ms"
        ));
        let multi = self.urls.len() > 1;
        for u in self.urls.iter().chain(multi.then_some(&self.total)) {
            let statuses: Vec<String> = u.statuses.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            out.push_str(&format!(
                "{:<40} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}\n",
                u.url,
                u.scheduled,
                u.responses,
                u.errors,
                u.timeouts,
                u.unsent,
                u.p50_ms,
                u.p90_ms,
                u.p99_ms,
                u.max_ms,
                statuses.join(" ")
            ));
            if let Some(e) = &u.first_error {
                out.push_str(&format!("    first error: {}\n", e.chars().take(200).collect::<String>()));
            }
        }
        out.push_str(&format!("achieved {:.1} responses/s; run took {:.2}s\n", self.achieved_rate, self.elapsed_s));
        out
    }
}
