//! A keep-alive HTTP/1.1 client for the admin API, just enough for JSON requests: one
//! request at a time per connection, `content-length` or chunked bodies. The connection
//! is reopened on the next request after the server closed it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The admin API key every fleetmq in this benchmark is started with.
pub const ADMIN_KEY: &str = "fleetmq-bench-fleet-admin-key-0123456789";

/// How long one request may take before the run counts it as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One keep-alive connection to the admin API.
pub struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    request: Vec<u8>,
}

/// A response: status code and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
            request: Vec::with_capacity(512),
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, json: &serde_json::Value) -> anyhow::Result<Response> {
        let body = serde_json::to_vec(json)?;
        self.request("POST", path, Some(&body)).await
    }

    /// Sends one request and reads its response. A request is never retried: a POST
    /// that failed half-way may have taken effect.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let body = body.unwrap_or_default();
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nx-api-key: {ADMIN_KEY}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
                self.buf.clear();
            }
            let stream = self.stream.as_mut().context("no connection")?;
            stream.write_all(&self.request).await?;
            read_response(stream, &mut self.buf).await
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")));
        match result {
            Ok((response, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.stream = None;
                Err(e.context(format!("{method} {path}")))
            }
        }
    }
}

/// Reads one response from `stream` (bytes after it stay in `buf`). Returns whether the
/// connection may be reused.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(Response, bool)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    buf.drain(..head_end);
    let body = match (chunked, length) {
        (true, _) => read_chunked(stream, buf).await?,
        (false, Some(n)) => {
            while buf.len() < n {
                fill(stream, buf).await?;
            }
            buf.drain(..n).collect()
        }
        // RFC 9110 §15.3.5 / §15.4.5: no body, and none announced.
        (false, None) if status == 204 || status == 304 => Vec::new(),
        (false, None) => bail!("response without content-length (status {status})"),
    };
    Ok((Response { status, body }, keep))
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
        while buf.len() < line_end + 2 + size + 2 {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Ok(body);
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8192);
    }
    if stream.read_buf(buf).await? == 0 {
        bail!("connection closed by the server");
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
