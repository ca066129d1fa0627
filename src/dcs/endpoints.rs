//! The etcd members a node talks to: one gRPC client per member, a deadline
//! on every attempt, and the member health that decides where the next
//! request goes.
//!
//! Requests stick to one member (the *current* one) while it answers. A
//! member that does not answer within the attempt deadline, or answers that
//! it cannot serve (`no leader`, `request timed out`, `too many requests`),
//! is marked unhealthy for a while and the request moves on to the next
//! member, all within the caller's budget (`retry_timeout`), as Patroni's
//! client does. A stalled member (frozen process, slow disk, paused VM) so
//! costs one attempt deadline, never the whole budget.
//!
//! A member's client is dropped when it fails, so the next use opens a new
//! connection and resolves the member's name again: one name that stops
//! resolving, or one address that stops answering, never pins the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

use super::client::DcsError;

/// Shortest deadline of one attempt on one member.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// How long a failed member is avoided when another one is available.
const QUARANTINE: Duration = Duration::from_secs(10);

/// The attempt deadline for a budget: a third of it (three members can be
/// tried), at least [`MIN_ATTEMPT`], at most the budget. Patroni divides its
/// `retry_timeout` by the member count the same way.
pub fn attempt_timeout(budget: Duration) -> Duration {
    (budget / 3).max(MIN_ATTEMPT).min(budget)
}

/// Counters and facts for `/metrics` (shared by every clone of a `Dcs`).
#[derive(Debug, Default)]
pub struct DcsStats {
    /// Times requests moved from one member to another.
    pub switches: AtomicU64,
    /// Attempts that got no answer within their deadline.
    pub timeouts: AtomicU64,
    /// Attempts that failed otherwise (connection refused, `no leader`, ...).
    pub failures: AtomicU64,
    /// Successful lease keepalives.
    pub keepalives: AtomicU64,
    last_keepalive: Mutex<Option<Instant>>,
}

impl DcsStats {
    pub(super) fn keepalive_ok(&self, at: Instant) {
        self.keepalives.fetch_add(1, Ordering::Relaxed);
        *self.last_keepalive.lock().expect("stats lock is never poisoned") = Some(at);
    }

    /// Time since the send of the last successful keepalive.
    pub fn since_last_keepalive(&self) -> Option<Duration> {
        self.last_keepalive.lock().expect("stats lock is never poisoned").map(|t| t.elapsed())
    }
}

/// What `/metrics` shows of the members.
#[derive(Debug, Clone)]
pub struct MemberHealth {
    pub name: String,
    pub current: bool,
    pub healthy: bool,
}

struct Slot {
    /// `host:port` as configured (what the logs name).
    name: String,
    url: String,
    client: Option<Client>,
    /// Avoided until then (monotonic).
    unhealthy_until: Option<Instant>,
}

struct State {
    slots: Vec<Slot>,
    current: usize,
}

/// The members of one etcd cluster and the clients to them.
pub struct Endpoints {
    opts: ConnectOptions,
    state: Mutex<State>,
    pub stats: DcsStats,
    /// Bumped on every switch of the current member (the watch follows it).
    switched: tokio::sync::watch::Sender<usize>,
}

/// One attempt's member: its index and a client to it.
pub struct Pick {
    pub index: usize,
    pub name: String,
    pub client: Client,
}

impl Endpoints {
    /// `members`: `(name, url)` pairs; no connection is made here.
    pub fn new(members: Vec<(String, String)>, opts: ConnectOptions) -> Arc<Endpoints> {
        let slots =
            members.into_iter().map(|(name, url)| Slot { name, url, client: None, unhealthy_until: None }).collect();
        Arc::new(Endpoints {
            opts,
            state: Mutex::new(State { slots, current: 0 }),
            stats: DcsStats::default(),
            switched: tokio::sync::watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the endpoint lock is never held across a panic")
    }

    /// The member requests go to now.
    #[cfg(test)]
    fn current(&self) -> (usize, String) {
        let st = self.lock();
        (st.current, st.slots[st.current].name.clone())
    }

    /// Follows switches of the current member.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.switched.subscribe()
    }

    pub fn health(&self) -> Vec<MemberHealth> {
        let st = self.lock();
        let now = Instant::now();
        st.slots
            .iter()
            .enumerate()
            .map(|(i, s)| MemberHealth {
                name: s.name.clone(),
                current: i == st.current,
                healthy: s.unhealthy_until.is_none_or(|t| t <= now),
            })
            .collect()
    }

    /// The member for the next attempt, skipping those in `tried`: the
    /// current one if healthy, else the next healthy one (which becomes
    /// current), else the one whose quarantine ends first. `None`: every
    /// member was tried.
    fn choose(&self, tried: &[usize]) -> Option<(usize, String, Option<Client>, String)> {
        let mut st = self.lock();
        let now = Instant::now();
        let n = st.slots.len();
        let healthy = |s: &Slot| s.unhealthy_until.is_none_or(|t| t <= now);
        let order = (0..n).map(|k| (st.current + k) % n).filter(|i| !tried.contains(i));
        let candidates: Vec<usize> = order.collect();
        let index = candidates
            .iter()
            .copied()
            .find(|&i| healthy(&st.slots[i]))
            .or_else(|| candidates.iter().copied().min_by_key(|&i| st.slots[i].unhealthy_until))?;
        if index != st.current && healthy(&st.slots[index]) {
            let from = st.slots[st.current].name.clone();
            st.current = index;
            self.stats.switches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %from, to = %st.slots[index].name, "etcd: switching to another member");
            self.switched.send_replace(index);
        }
        let s = &st.slots[index];
        Some((index, s.name.clone(), s.client.clone(), s.url.clone()))
    }

    /// A client to `index` (connected now if it had none).
    async fn client(&self, index: usize, existing: Option<Client>, url: &str) -> Result<Client, etcd_client::Error> {
        if let Some(c) = existing {
            return Ok(c);
        }
        // Only authentication (user/password) talks to etcd here; the
        // channel itself connects on first use.
        let c = Client::connect([url], Some(self.opts.clone())).await?;
        let mut st = self.lock();
        Ok(st.slots[index].client.get_or_insert(c).clone())
    }

    /// Records a failed attempt: the member is avoided for a while and its
    /// client dropped (a new connection, and a new name lookup, next time).
    pub fn failed(&self, index: usize, err: &DcsError, timed_out: bool) {
        let counter = if timed_out { &self.stats.timeouts } else { &self.stats.failures };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let s = &mut st.slots[index];
        let was_healthy = s.unhealthy_until.is_none_or(|t| t <= Instant::now());
        s.unhealthy_until = Some(Instant::now() + QUARANTINE);
        s.client = None;
        if was_healthy {
            tracing::warn!(member = %s.name, error = %err, avoid_s = QUARANTINE.as_secs(), "etcd member marked unhealthy");
        }
    }

    fn succeeded(&self, index: usize) {
        let mut st = self.lock();
        st.slots[index].unhealthy_until = None;
    }

    /// Runs `op` against one member after another until one answers, an
    /// answer is final (not a reachability failure), or `budget` is spent.
    /// Each attempt has its own deadline ([`attempt_timeout`]). `on_fail` sees
    /// every failed attempt (member name, error), for callers that log them.
    pub async fn call<T, F, Fut>(
        &self,
        budget: Duration,
        mut op: F,
        mut on_fail: impl FnMut(&str, &DcsError),
    ) -> Result<T, DcsError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + budget;
        let per_attempt = attempt_timeout(budget);
        let mut tried: Vec<usize> = Vec::new();
        let mut delay = Duration::from_millis(20);
        loop {
            let Some((index, name, existing, url)) = self.choose(&tried) else {
                // Every member failed once in this call: pause briefly, then
                // go round again while the budget lasts.
                if Instant::now() + delay >= deadline {
                    return Err(DcsError::Unreachable("no etcd member answered".into()));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                tried.clear();
                continue;
            };
            let started = Instant::now();
            let attempt_deadline = (started + per_attempt).min(deadline);
            let attempt = async {
                let client = self.client(index, existing, &url).await?;
                op(client).await
            };
            let (err, timed_out) = match tokio::time::timeout_at(attempt_deadline, attempt).await {
                Ok(Ok(v)) => {
                    self.succeeded(index);
                    return Ok(v);
                }
                Ok(Err(e)) => (DcsError::from(e), false),
                Err(_) => (
                    DcsError::Unreachable(format!(
                        "{name}: no answer within {} ms",
                        (attempt_deadline - started).as_millis()
                    )),
                    true,
                ),
            };
            if !err.is_unreachable() {
                // An answer (a refused request, a missing lease): the member works.
                self.succeeded(index);
                return Err(err);
            }
            on_fail(&name, &err);
            self.failed(index, &err, timed_out);
            tried.push(index);
            if Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!(member = %name, error = %err, "etcd call failed; trying another member");
        }
    }

    /// A client to the current member (for long-lived streams: the watch),
    /// bounded by one attempt deadline.
    pub async fn pick(&self, budget: Duration) -> Result<Pick, DcsError> {
        let (index, name, existing, url) = self.choose(&[]).expect("there is at least one member");
        match tokio::time::timeout(attempt_timeout(budget), self.client(index, existing, &url)).await {
            Ok(Ok(client)) => Ok(Pick { index, name, client }),
            Ok(Err(e)) => {
                let e = DcsError::from(e);
                self.failed(index, &e, false);
                Err(e)
            }
            Err(_) => {
                let e = DcsError::Unreachable(format!("{name}: no answer"));
                self.failed(index, &e, true);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<Endpoints> {
        Endpoints::new(
            (0..n).map(|i| (format!("m{i}:2379"), format!("http://127.0.0.1:{}", 1 + i))).collect(),
            ConnectOptions::new(),
        )
    }

    #[test]
    fn attempt_deadline_is_a_third_of_the_budget_within_bounds() {
        for (budget_ms, want_ms) in [(4_000, 1_333), (10_000, 3_333), (2_000, 1_000), (500, 500), (30_000, 10_000)] {
            assert_eq!(attempt_timeout(Duration::from_millis(budget_ms)).as_millis(), want_ms, "budget {budget_ms}");
        }
    }

    #[tokio::test]
    async fn sticks_to_the_current_member_and_moves_past_unhealthy_ones() {
        let p = pool(3);
        let e = DcsError::Unreachable("x".into());
        assert_eq!(p.choose(&[]).unwrap().0, 0);
        assert_eq!(p.choose(&[]).unwrap().0, 0, "sticky");
        p.failed(0, &e, true);
        assert_eq!(p.choose(&[]).unwrap().0, 1, "moves on");
        assert_eq!(p.current().0, 1, "and the next one becomes current");
        assert_eq!(p.stats.switches.load(Ordering::Relaxed), 1);
        assert_eq!(p.stats.timeouts.load(Ordering::Relaxed), 1);
        // Within one call, tried members are skipped even when healthy.
        assert_eq!(p.choose(&[1]).unwrap().0, 2);
        p.failed(2, &e, false);
        assert_eq!(p.choose(&[1]).unwrap().0, 0, "all tried but 0: the quarantined 0, current unchanged");
        assert_eq!(p.current().0, 2, "an unhealthy member does not become current by being tried");
        assert!(p.choose(&[0, 1, 2]).is_none());
        // All unhealthy: the one whose quarantine ends first.
        p.failed(1, &e, false);
        assert_eq!(p.choose(&[]).unwrap().0, 0);
        let h = p.health();
        assert!(h.iter().all(|m| !m.healthy));
        assert_eq!(h.iter().filter(|m| m.current).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn quarantine_ends() {
        let p = pool(2);
        p.failed(0, &DcsError::Unreachable("x".into()), true);
        assert_eq!(p.choose(&[]).unwrap().0, 1);
        tokio::time::advance(QUARANTINE + Duration::from_millis(1)).await;
        assert!(p.health().iter().all(|m| m.healthy));
        assert_eq!(p.choose(&[]).unwrap().0, 1, "still sticky to the member that worked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_moves_on_after_one_attempt_deadline_and_stays_in_budget() {
        let p = pool(3);
        let budget = Duration::from_secs(4);
        let t0 = Instant::now();
        let mut seen = Vec::new();
        // Member 0 never answers; member 1 answers.
        let r: Result<usize, DcsError> = p
            .call(
                budget,
                |_c| {
                    let k = p.current().0;
                    async move {
                        if k == 0 {
                            std::future::pending::<()>().await;
                        }
                        Ok(k)
                    }
                },
                |name, _| seen.push(name.to_owned()),
            )
            .await;
        assert_eq!(r.unwrap(), 1);
        // (the timer wheel rounds up to the millisecond)
        let lost = t0.elapsed();
        assert!(
            lost >= attempt_timeout(budget) && lost < attempt_timeout(budget) + Duration::from_millis(5),
            "one attempt deadline lost, not the budget: {lost:?}"
        );
        assert_eq!(seen, ["m0:2379"]);
        // Nobody answers: the call ends at the budget, not later.
        let t0 = Instant::now();
        let r: Result<(), DcsError> =
            p.call(budget, |_c| std::future::pending::<Result<(), etcd_client::Error>>(), |_, _| {}).await;
        assert!(r.unwrap_err().is_unreachable());
        assert!(t0.elapsed() <= budget, "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_final_answer_is_not_retried() {
        let p = pool(3);
        let mut calls = 0;
        let r: Result<(), DcsError> = p
            .call(
                Duration::from_secs(4),
                |_c| {
                    calls += 1;
                    async { Err(etcd_client::Error::InvalidArgs("bad".into())) }
                },
                |_, _| panic!("not a reachability failure"),
            )
            .await;
        assert!(matches!(r, Err(DcsError::Etcd(_))));
        assert_eq!(calls, 1);
        assert_eq!(p.current().0, 0);
    }
}
