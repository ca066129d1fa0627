//! tusk: PID 1 of a highly available PostgreSQL container.
//!
//! See ARCHITECTURE.md for the code map. `main.rs` only dispatches:
//! [`init`] when tusk is PID 1, else [`supervisor`] or a [`cli`] command.

pub mod api;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod config;
pub mod dcs;
pub mod exit;
pub mod ha;
pub mod init;
pub mod logging;
pub mod notify;
pub mod patroni;
pub mod postgres;
pub mod prometheus;
pub mod signals;
pub mod storage;
pub mod supervisor;
