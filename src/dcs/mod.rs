//! The distributed configuration store: etcd v3, Patroni's key layout and values.

pub mod client;
pub mod values;
mod view;

pub use view::ClusterView;
