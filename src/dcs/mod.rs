//! The distributed configuration store: etcd v3, Patroni's key layout and values.

pub mod client;
pub mod endpoints;
pub mod values;
mod view;
pub mod watch;

pub use view::ClusterView;
