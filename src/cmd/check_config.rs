//! `ccsync check-config`: validate and print the effective configuration (secrets masked).

use std::process::ExitCode;

use super::exit::config_error;
use crate::config::Settings;

pub fn run(path: Option<&std::path::Path>) -> ExitCode {
    let settings = match Settings::load(path).and_then(|s| s.validate_for_sync().map(|_| s)) {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    println!("{}", settings.redacted_summary());
    for key in &settings.unknown_keys {
        eprintln!("warning: unknown configuration key {key}, ignored (a typo?)");
    }
    match crate::crypto::check_key(&settings.security) {
        Ok(Some(warning)) => eprintln!("warning: {warning}"),
        Ok(None) => {}
        Err(e) => return config_error(&e),
    }
    println!("configuration OK");
    ExitCode::SUCCESS
}
