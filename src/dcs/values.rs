//! Patroni's values in etcd: defined in the leaf module [`crate::patroni`]
//! (the configuration and the REST API use them too); re-exported here
//! under their historical path.

pub use crate::patroni::{
    DynamicConfig, Failover, HistoryLine, MemberValue, PATRONI_COMPAT_VERSION, PostgresqlSection, Status, SyncState,
};
