//! The in-process sandbox of the Constant Contact API, on port 0.

use ccsync::sandbox::{Sandbox, SandboxConfig};

/// A sandbox with `contacts` generated contacts in its default account (8 lists).
pub async fn sandbox(contacts: usize) -> Sandbox {
    sandbox_with(SandboxConfig {
        contacts,
        ..SandboxConfig::default()
    })
    .await
}

/// A sandbox started from `cfg`.
pub async fn sandbox_with(cfg: SandboxConfig) -> Sandbox {
    Sandbox::start(cfg).await.expect("sandbox starts")
}
