//! High availability: the decision ([`decide`]) and, around it, the executor.

pub mod decide;
pub mod run;
