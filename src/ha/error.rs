//! What can go wrong in the HA executor's steps, typed; logged where the
//! loop decides what to do about it.

use std::process::ExitStatus;

use crate::dcs::client::DcsError;
use crate::postgres::PgError;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Sql(#[from] tokio_postgres::Error),
    #[error("the shared credentials in etcd are not JSON: {0}")]
    Credentials(#[from] serde_json::Error),
    #[error(
        "{var} is not set and no password for role {role:?} is shared in etcd (the cluster was not bootstrapped \
         by tusk, not yet, or its etcd does not authenticate clients): set {var} (or {var}_FILE); it is needed for \
         {needed_for}"
    )]
    NoPassword { var: &'static str, role: String, needed_for: &'static str },
    #[error("postgres exited during bootstrap: {0}")]
    ExitedDuringBootstrap(ExitStatus),
    #[error("the leader key was taken during bootstrap")]
    LeaderTaken,
    #[error("the leader has no member key yet")]
    NoLeaderMember,
    #[error("clone failed: {0}")]
    Clone(String),
    #[error(
        "no replica method worked (postgresql.create_replica_methods names only the bucket's base backup, and \
         none could be restored)"
    )]
    NoReplicaMethod,
    #[error("pg_rewind failed: {0}")]
    Rewind(PgError),
    #[error(
        "this member last ran as primary on timeline {timeline}, and the leader {leader} promoted to timeline \
         {timeline} on its own: the histories differ after their common parent, where pg_rewind cannot see it"
    )]
    TimelineCollision { timeline: u32, leader: String },
}
