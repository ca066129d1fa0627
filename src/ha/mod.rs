//! High availability: the decision ([`decide`]) and, around it, the executor.

mod actions;
mod callbacks;
mod commands;
mod credentials;
pub mod decide;
mod error;
mod failsafe;
mod lease;
mod observe;
mod publish;
pub mod run;
mod slots;
mod sync;
