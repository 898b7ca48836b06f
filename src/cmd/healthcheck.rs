//! `ccsync healthcheck`: Docker's HEALTHCHECK (a distroless image has no curl).
//!
//! Without `--url` it checks the daemon this configuration describes: `[server] listen`
//! (file, then `CCSYNC__SERVER__LISTEN`), an unspecified address (0.0.0.0, [::]) reached on
//! loopback. Liveness (`/livez`) by default, so that one account needing re-authorisation
//! does not get a healthy container restarted; `--ready` checks `/readyz` instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{ConfigError, Settings};

/// The URL to check for the configuration at `path` (and the environment).
pub fn configured_url(path: Option<&Path>, ready: bool) -> Result<String, ConfigError> {
    let listen = Settings::load_listen(path)?;
    Ok(url_for(listen, ready))
}

/// `http://<listen>/livez` (or `/readyz`), an unspecified address replaced by loopback.
pub fn url_for(listen: SocketAddr, ready: bool) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = if ready { "readyz" } else { "livez" };
    format!("http://{}/{path}", SocketAddr::new(ip, listen.port()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_checked_on_loopback() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            url_for(at("0.0.0.0:9187"), false),
            "http://127.0.0.1:9187/livez"
        );
        assert_eq!(url_for(at("[::]:9000"), true), "http://[::1]:9000/readyz");
        assert_eq!(
            url_for(at("10.1.2.3:9187"), false),
            "http://10.1.2.3:9187/livez"
        );
        assert_eq!(url_for(at("[::1]:9187"), false), "http://[::1]:9187/livez");
    }
}
