//! Following the cluster's keys: one watch on the current etcd member, moved
//! to another member when that one stalls, from the last revision seen, so
//! no event is missed or delivered twice.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::time::Instant;

use super::client::{Dcs, DcsError};
use super::endpoints::attempt_timeout;

/// How often the watch asks its member for progress (a frozen member keeps
/// its TCP connection open and sends nothing)...
const PROBE: Duration = Duration::from_millis(500);
/// ... and how long an answer may take before the member is given up (and
/// with it, through the member's health, the requests go elsewhere too).
/// A progress answer costs etcd nothing: even a loaded member sends it in
/// milliseconds.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// One change of a key under the cluster's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key relative to the prefix (`leader`, `members/n1`, ...).
    pub key: String,
    pub deleted: bool,
    /// The key did not exist before this event (its version is 1).
    pub created: bool,
    pub revision: i64,
}

/// Why a watch on one member ended.
enum End {
    /// The member stalled or failed: avoid it.
    Failed(DcsError, bool),
    /// The current member changed (requests moved): follow them.
    Moved,
    /// The start revision was compacted: start again from a fresh read.
    Compacted,
}

impl Dcs {
    /// Follows every key of the cluster for as long as the future runs.
    /// `on_events` gets each batch of events once, in revision order;
    /// `restarted` is called after each (re)start of the watch, because
    /// events before the first watch (or after a compaction) are not
    /// delivered: the caller should look at the keys again.
    pub async fn follow(&self, mut on_events: impl FnMut(&[KeyEvent]), mut restarted: impl FnMut()) {
        // The next revision to deliver (`None`: from a fresh read).
        let mut next: Option<i64> = None;
        let attempt = attempt_timeout(self.timeout);
        let probe_deadline = PROBE_DEADLINE.min(attempt);
        loop {
            let pick = match self.endpoints.pick(self.timeout).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "watch: no member to watch from; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let from = match next {
                Some(r) => r,
                None => match self.snapshot().await {
                    Ok(s) => s.revision + 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "watch: cannot read the revision; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            let prefix = self.keys.prefix().to_owned();
            let mut client = pick.client.clone();
            let watch = match tokio::time::timeout(attempt, client.watch(prefix.clone(), Some(opts))).await {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    let e = DcsError::from(e);
                    self.endpoints.failed(pick.index, &e, false);
                    continue;
                }
                Err(_) => {
                    let e = DcsError::Unreachable(format!("{}: watch not created within {attempt:?}", pick.name));
                    self.endpoints.failed(pick.index, &e, true);
                    continue;
                }
            };
            let (mut watcher, mut stream) = watch.split();
            next = Some(from);
            tracing::debug!(member = %pick.name, from, "watching the cluster's keys");
            restarted();
            let mut switched = self.endpoints.subscribe();
            switched.borrow_and_update();
            let mut probe = tokio::time::interval_at(Instant::now() + PROBE, PROBE);
            let mut asked: Option<Instant> = None;
            let end = loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(resp)) => {
                            asked = None;
                            if resp.canceled() {
                                if resp.compact_revision() > 0 {
                                    break End::Compacted;
                                }
                                break End::Failed(DcsError::Etcd(format!("watch cancelled: {}", resp.cancel_reason())), false);
                            }
                            let floor = next.unwrap_or(0);
                            let events: Vec<KeyEvent> = resp
                                .events()
                                .iter()
                                .filter_map(|ev| {
                                    let kv = ev.kv()?;
                                    let key = kv.key_str().ok()?.strip_prefix(&prefix)?.to_owned();
                                    let revision = kv.mod_revision();
                                    (revision >= floor).then_some(KeyEvent {
                                        key,
                                        deleted: ev.event_type() == EventType::Delete,
                                        created: ev.event_type() == EventType::Put && kv.version() == 1,
                                        revision,
                                    })
                                })
                                .collect();
                            let last = events.iter().map(|e| e.revision).max();
                            let header = resp.header().map(|h| h.revision());
                            if let Some(r) = header.into_iter().chain(last).max() {
                                next = Some(next.unwrap_or(0).max(r + 1));
                            }
                            if !events.is_empty() {
                                on_events(&events);
                            }
                        }
                        Ok(None) => break End::Failed(DcsError::Unreachable(format!("{}: watch stream closed", pick.name)), false),
                        Err(e) => break End::Failed(DcsError::from(e), false),
                    },
                    _ = probe.tick() => match asked {
                        Some(t) if t.elapsed() >= probe_deadline => {
                            break End::Failed(
                                DcsError::Unreachable(format!(
                                    "{}: watch progress not confirmed within {probe_deadline:?}",
                                    pick.name
                                )),
                                true,
                            );
                        }
                        Some(_) => {}
                        None => {
                            if let Err(e) = watcher.request_progress().await {
                                break End::Failed(DcsError::from(e), false);
                            }
                            asked = Some(Instant::now());
                        }
                    },
                    r = switched.changed() => {
                        if r.is_err() || *switched.borrow_and_update() != pick.index {
                            break End::Moved;
                        }
                    }
                }
            };
            match end {
                End::Failed(e, timed_out) => {
                    if e.is_unreachable() {
                        self.endpoints.failed(pick.index, &e, timed_out);
                    } else {
                        tracing::warn!(member = %pick.name, error = %e, "watch ended; starting it again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                End::Moved => tracing::info!(from = %pick.name, "watch follows the requests to another etcd member"),
                End::Compacted => {
                    tracing::info!("watch revision compacted; starting from a fresh read");
                    next = None;
                }
            }
        }
    }
}
