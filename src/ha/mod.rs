//! High availability: the decision ([`decide`]) and, around it, the executor.

pub mod decide;
mod error;
pub mod run;
