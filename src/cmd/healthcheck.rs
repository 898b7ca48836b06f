//! `ccsync healthcheck`: Docker's HEALTHCHECK (a distroless image has no curl).

use std::process::ExitCode;
use std::time::Duration;

/// GETs `url` and exits 0 on a 2xx answer, 1 otherwise (with the body on stderr).
pub async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    match client.get(url).send().await {
        Ok(resp) if resp.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            eprintln!("ccsync healthcheck: {url} answered {status}: {body}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("ccsync healthcheck: {url}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
