//! The admin API over plain HTTP/1.1, and provisioning the simulated devices with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::warn;

use crate::sealer::DeviceKey;

/// Admin API requests in flight while provisioning (the broker hashes every token).
const PROVISION_CONCURRENCY: usize = 8;
/// How long one admin API request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct NewDevice<'a> {
    id: &'a str,
    labels: SimLabels,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    encrypted: bool,
}

#[derive(Serialize)]
struct SimLabels {
    sim: &'static str,
}

#[derive(Deserialize)]
struct Provisioned {
    device: DeviceView,
    credentials: Credentials,
    key: Option<KeyView>,
}

#[derive(Deserialize)]
struct DeviceView {
    encrypted: bool,
}

#[derive(Deserialize)]
struct Credentials {
    password: String,
}

#[derive(Deserialize)]
struct RotatedCredentials {
    credentials: Credentials,
}

#[derive(Deserialize)]
struct KeyView {
    generation: u8,
    base64: String,
}

#[derive(Deserialize)]
struct RotatedKey {
    key: KeyView,
}

/// A minimal admin API client: one `Connection: close` request per call.
#[derive(Debug)]
pub(crate) struct Admin {
    authority: String,
    base_path: String,
    api_key: String,
}

impl Admin {
    pub(crate) fn new(url: &str, api_key: String) -> anyhow::Result<Admin> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--admin must be an http:// URL, got {url:?}"))?;
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--admin URL {url:?} names no host");
        }
        Ok(Admin {
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
            api_key,
        })
    }

    /// One request; answers the status code and the body.
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("connecting to the admin API at {}", self.authority))?;
            let head = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.base_path,
                self.authority,
                self.api_key,
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            parse_http_response(&raw)
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {ADMIN_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))
    }

    /// A request whose 2xx body is `T`; any other status is an error naming the API's message.
    async fn json<T: DeserializeOwned>(&self, method: &str, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.call(method, path, b"").await?;
        if !(200..300).contains(&status) {
            return Err(api_error(method, path, status, &body));
        }
        serde_json::from_slice(&body).with_context(|| format!("{method} {path}: unexpected body"))
    }
}

/// Status code and body of a complete HTTP/1.1 response.
fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response ended inside its headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("response headers are not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("response has no status code")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[end + 4..];
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let size = std::str::from_utf8(&body[..line_end])?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("truncated chunk")?);
        body = body.get(size + 2..).context("truncated chunk")?;
    }
}

fn api_error(method: &str, path: &str, status: u16, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    anyhow!("{method} {path}: HTTP {status}: {message}")
}

/// What a device needs to connect.
pub(crate) struct Identity {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) key: Option<DeviceKey>,
}

/// Creates the device, or takes over an existing one with fresh credentials (and a fresh
/// key when it is encrypted: a key is only ever shown when it is made).
async fn provision(admin: &Admin, id: &str, encrypted: bool) -> anyhow::Result<Identity> {
    let body = serde_json::to_vec(&NewDevice {
        id,
        labels: SimLabels { sim: "true" },
        encrypted,
    })?;
    let path = "/api/v1/devices";
    let (status, raw) = admin.call("POST", path, &body).await?;
    let (token, is_encrypted, key) = match status {
        201 => {
            let p: Provisioned = serde_json::from_slice(&raw).context("unexpected 201 body")?;
            (p.credentials.password, p.device.encrypted, p.key)
        }
        409 => {
            let rotated: RotatedCredentials = admin
                .json("POST", &format!("{path}/{id}/rotate-credentials"))
                .await?;
            let device: DeviceView = admin.json("GET", &format!("{path}/{id}")).await?;
            (rotated.credentials.password, device.encrypted, None)
        }
        _ => return Err(api_error("POST", path, status, &raw)),
    };
    if encrypted && !is_encrypted {
        warn!(
            device_id = id,
            "device exists without encryption; it stays plaintext"
        );
    }
    let key = match (is_encrypted, key) {
        (false, _) => None,
        (true, Some(key)) => Some(key),
        (true, None) => {
            let rotated: RotatedKey = admin
                .json("POST", &format!("{path}/{id}/rotate-key"))
                .await?;
            Some(rotated.key)
        }
    };
    Ok(Identity {
        id: id.to_owned(),
        token,
        key: key
            .map(|k| DeviceKey::decode(k.generation, &k.base64))
            .transpose()?,
    })
}

/// Provisions every device, a few at a time; the first failure stops the run.
pub(crate) async fn provision_all(
    admin: Arc<Admin>,
    ids: Vec<String>,
    encrypted: bool,
) -> anyhow::Result<Vec<Identity>> {
    let mut ids = ids.into_iter();
    let Some(first) = ids.next() else {
        return Ok(Vec::new());
    };
    // A broker that just started checks the admin key with a slow hash once and refuses
    // other requests while that check runs: the first request goes alone.
    let first = provision(&admin, &first, encrypted)
        .await
        .with_context(|| format!("provisioning {first}"))?;
    let permits = Arc::new(Semaphore::new(PROVISION_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (index, id) in ids.enumerate() {
        let (admin, permits) = (admin.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let identity = provision(&admin, &id, encrypted)
                .await
                .with_context(|| format!("provisioning {id}"))?;
            anyhow::Ok((index, identity))
        });
    }
    let mut rest = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        rest.push(joined.context("provisioning task failed")??);
    }
    rest.sort_by_key(|(index, _)| *index);
    Ok(std::iter::once(first)
        .chain(rest.into_iter().map(|(_, identity)| identity))
        .collect())
}
