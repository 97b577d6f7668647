//! `--provision`: the trackers as devices with plugin `teltonika` and their IMEI as id,
//! created through the admin API (`POST /api/v1/devices`). A tracker needs no
//! credentials (the IMEI is its login), so an existing device is kept as it is, as long
//! as its plugin is `teltonika`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Admin API requests in flight (the broker hashes a token for every device it makes).
const CONCURRENCY: usize = 8;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The admin API at `http://host:port`, one `Connection: close` request per call.
#[derive(Debug)]
pub struct Admin {
    authority: String,
    api_key: String,
}

impl Admin {
    pub fn new(url: &str, api_key: String) -> anyhow::Result<Admin> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("--admin-url must be an http:// URL, got {url:?}"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("--admin-url {url:?}: expected http://host:port");
        }
        Ok(Admin {
            authority: authority.to_owned(),
            api_key,
        })
    }

    /// Status code and JSON body (`null` when empty) of one request.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let exchange = async {
            let mut s = TcpStream::connect(&self.authority).await?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nx-api-key: {}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                self.authority,
                self.api_key,
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await?;
            anyhow::Ok(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path} to {}", self.authority))?;
        parse_response(&raw).with_context(|| format!("{method} {path}"))
    }

    /// Creates the tracker's device, or checks that the existing one is a tracker.
    async fn provision(&self, imei: &str) -> anyhow::Result<()> {
        let new = json!({"id": imei, "plugin": "teltonika", "labels": {"sim": "tracker"}});
        let (status, body) = self.call("POST", "/api/v1/devices", Some(new)).await?;
        match status {
            201 => Ok(()),
            409 => {
                let path = format!("/api/v1/devices/{imei}");
                let (status, device) = self.call("GET", &path, None).await?;
                match device["plugin"].as_str() {
                    Some("teltonika") => Ok(()),
                    Some(other) => {
                        bail!("device {imei} exists with plugin {other:?}, not teltonika")
                    }
                    None => bail!("GET {path}: HTTP {status}: {device}"),
                }
            }
            _ => bail!("POST /api/v1/devices {imei}: HTTP {status}: {body}"),
        }
    }
}

/// The status code and JSON body of a whole HTTP/1.1 response with a `content-length`
/// body (what the admin API sends).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Value)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the response ended inside its headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the response has no status code")?;
    let body = &raw[end + 4..];
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).context("the response body is not JSON")?
    };
    Ok((status, json))
}

/// Provisions every IMEI, a few at a time; the first failure stops it.
pub async fn provision_all(admin: Arc<Admin>, imeis: Vec<String>) -> anyhow::Result<()> {
    let mut imeis = imeis.into_iter();
    // A broker that just started checks the admin key with a slow hash once: the first
    // request goes alone.
    if let Some(first) = imeis.next() {
        admin.provision(&first).await?;
    }
    let imeis = Arc::new(std::sync::Mutex::new(imeis));
    let mut workers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (admin, imeis) = (admin.clone(), imeis.clone());
        workers.spawn(async move {
            loop {
                let next = imeis
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .next();
                let Some(imei) = next else {
                    return anyhow::Ok(());
                };
                admin.provision(&imei).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("provisioning task failed")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_and_urls_are_read() {
        let raw = b"HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{\"error\":{}}\n";
        let (status, body) = parse_response(raw).unwrap();
        assert_eq!(status, 409);
        assert_eq!(body, json!({"error": {}}));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert_eq!(
            Admin::new("http://127.0.0.1:8080/", String::new())
                .unwrap()
                .authority,
            "127.0.0.1:8080"
        );
        assert!(Admin::new("https://x", String::new()).is_err());
        assert!(Admin::new("http://x/api", String::new()).is_err());
    }
}
