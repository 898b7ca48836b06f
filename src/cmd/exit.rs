//! Exit codes: 0 ok, 1 a job failed, 2 usage, 78 configuration error (sysexits).

use std::process::ExitCode;

use crate::config::ConfigError;

/// sysexits `EX_CONFIG`.
pub const EX_CONFIG: u8 = 78;
/// A job failed.
pub const EX_JOB_FAILED: u8 = 1;
/// Bad usage.
pub const EX_USAGE: u8 = 2;

/// Prints a configuration error (it names the key) and returns `EX_CONFIG`.
pub fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("ccsync: {e}");
    ExitCode::from(EX_CONFIG)
}
