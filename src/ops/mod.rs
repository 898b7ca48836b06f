//! What operators see of a running daemon: the health/metrics listener, Prometheus
//! metrics, and systemd notifications.

pub mod health;
pub mod heartbeat;
pub mod metrics;
pub mod notify;
