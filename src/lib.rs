//! hbr-source-agent: probes storage endpoints and registers those that pass as Alibaba Cloud
//! HBR data sources of this host's client group, and keeps them in sync.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod desired;
pub mod fleet;
pub mod hbr;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod secret;
pub mod state;
