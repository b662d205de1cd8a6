//! The comparison runner's parts: processes it starts and measures, the suites, and the
//! result rows the report is generated from.

pub mod knfsd;
pub mod process;
pub mod report;
pub mod results;
pub mod servers;
pub mod suites;
pub mod swarm;
