//! The admin API as the CLI sees it: where it is and which key to present
//! ([`ConnArgs`] → [`Admin`]), and one request/answer exchange ([`Admin::call`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::error::CliError;

/// How long a TCP connect to the admin API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary request may take on top of any wait it asks the server for.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes left as they are in a path segment or query value (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn enc(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// `path` with `query` (already encoded `name=value` pairs) joined by `&`, if any.
pub fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// `path` with the parameters that have a value, each percent-encoded.
pub fn with_params(path: &str, params: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = (params.iter())
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", enc(v))))
        .collect();
    with_query(path, &query)
}

/// Where the admin API is and how to authenticate; shared by every admin command.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Admin API base URL [default: http:// + `admin.listen` from the config, 0.0.0.0 as 127.0.0.1]
    #[arg(long, global = true, env = "FLEETMQ_ADMIN_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Admin API key [default: `admin.api_key` from the config, else <data_dir>/admin.key]
    #[arg(
        long,
        global = true,
        env = "FLEETMQ_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// PEM CA certificate(s) to trust for an https:// URL instead of the public roots (the CA that signed `admin.tls.cert`)
    #[arg(long, global = true, env = "FLEETMQ_ADMIN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON answers as they are, one document per line
    #[arg(long, global = true)]
    pub json: bool,
    /// The config file `serve` uses; read only to find the admin address and data directory
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The admin address `serve` would listen on, as a URL a client can use: an unspecified
/// address (`0.0.0.0`, `::`) becomes loopback; `https` when `admin.tls` is set.
fn url_for_listen(listen: SocketAddr, tls: bool) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, listen.port()))
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A connection to the admin API: base URL, key and a pooled HTTP client.
pub struct Admin {
    /// Scheme, authority and any path prefix, without a trailing `/`.
    base: String,
    key: HeaderValue,
    /// Where the key came from, for the message of a refused key.
    key_from: String,
    client: HttpClient,
}

/// A 2xx answer.
pub struct Reply {
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`null` for an empty body).
    pub fn json(&self) -> Result<serde_json::Value, CliError> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| CliError::Protocol(format!("answer is not JSON: {e}")))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl Admin {
    /// Resolves URL and key from flags, environment and the `serve` config sources.
    pub async fn connect(args: &ConnArgs) -> Result<Admin, CliError> {
        // The config is read only for what the flags and environment left open.
        let config = if args.url.is_none() || args.api_key.is_none() {
            let path = args.config.as_deref();
            Some(
                crate::config::load(path, std::env::vars(), Vec::new())
                    .map_err(CliError::Config)?,
            )
        } else {
            None
        };
        let base = match (&args.url, &config) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(c)) => url_for_listen(c.admin.listen, c.admin.tls.is_some()),
            (None, None) => return Err(CliError::Usage("no admin API URL".into())),
        };
        let uri: Uri = base
            .parse()
            .map_err(|e| CliError::Usage(format!("--url {base:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(CliError::Usage(format!(
                "--url {base:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let (key, key_from) = match (&args.api_key, &config) {
            (Some(key), _) => (key.trim().to_owned(), flag_or_env(key).to_owned()),
            (None, Some(c)) => match &c.admin.api_key {
                Some(key) => (
                    key.clone(),
                    "admin.api_key (config file or FLEETMQ_ADMIN_API_KEY)".to_owned(),
                ),
                None => {
                    let path = c.data_dir.join(fleetmq_web::ADMIN_KEY_FILE);
                    let path = std::path::absolute(&path).unwrap_or(path);
                    (read_key_file(&path).await?, path.display().to_string())
                }
            },
            (None, None) => return Err(CliError::Usage("no admin API key".into())),
        };
        let key = HeaderValue::from_str(&key).map_err(|_| {
            CliError::Usage("the API key contains characters a header cannot carry".into())
        })?;
        Ok(Admin {
            base,
            key,
            key_from,
            client: http_client(args.ca.as_deref())?,
        })
    }

    /// Every item of the listing at `path` (no query), following its pages, as the rows
    /// `row` makes; with `json`, each page is printed as it came instead.
    pub async fn every_item(
        &self,
        json: bool,
        path: &str,
        row: impl Fn(&serde_json::Value) -> Vec<String>,
    ) -> Result<Vec<Vec<String>>, CliError> {
        let mut rows = Vec::new();
        self.each_page(path, |reply, page| {
            if json {
                super::output::print_raw(reply);
            } else {
                rows.extend(super::output::items(page)?.iter().map(&row));
            }
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// Every item of the listing at `path` (no query), following its pages.
    pub async fn all_items(&self, path: &str) -> Result<Vec<serde_json::Value>, CliError> {
        let mut items = Vec::new();
        self.each_page(path, |_, page| {
            items.extend(super::output::items(page)?.iter().cloned());
            Ok(())
        })
        .await?;
        Ok(items)
    }

    /// Hands each page of the listing at `path` to `on_page`, following `next_cursor`.
    async fn each_page(
        &self,
        path: &str,
        mut on_page: impl FnMut(&Reply, &serde_json::Value) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let mut cursor: Option<String> = None;
        loop {
            let mut page_path = format!("{path}?limit=1000");
            if let Some(c) = &cursor {
                page_path = format!("{page_path}&cursor={}", enc(c));
            }
            let reply = (self.call(Method::GET, &page_path, None, &[], REQUEST_TIMEOUT)).await?;
            let page = reply.json()?;
            on_page(&reply, &page)?;
            match page.get("next_cursor").and_then(serde_json::Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(()),
            }
        }
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request (`path` starts with `/`, query included) and reads the whole
    /// answer within `timeout`. Non-2xx answers become [`CliError`]s.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Reply, CliError> {
        let exchange = async {
            let response = self.send(method, path, body, headers).await?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.connect_error(&e))?
                .to_bytes();
            Ok::<_, CliError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CliError::Connect {
                url: self.base.clone(),
                reason: format!("no answer within {} s", timeout.as_secs()),
            })??;
        if status.is_success() {
            return Ok(Reply { body });
        }
        Err(self.refused(status, &body))
    }

    /// Sends a request and returns the answer with its body unread (for streams).
    /// Non-2xx answers become [`CliError`]s.
    pub async fn open(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<http::Response<Incoming>, CliError> {
        let response =
            tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, path, None, headers))
                .await
                .map_err(|_| CliError::Connect {
                    url: self.base.clone(),
                    reason: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                })??;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(self.refused(status, &body))
    }

    /// Sends `POST path` and writes the answer's body to `dest` as it arrives, waiting
    /// up to `first_byte` for the answer to begin and [`REQUEST_TIMEOUT`] between
    /// chunks. Returns the answer's headers. A body shorter than its `Content-Length`
    /// is an error.
    pub async fn download(
        &self,
        path: &str,
        dest: &mut tokio::fs::File,
        first_byte: Duration,
    ) -> Result<http::HeaderMap, CliError> {
        use tokio::io::AsyncWriteExt as _;
        let no_answer = |wait: Duration| CliError::Connect {
            url: self.base.clone(),
            reason: format!("no answer within {} s", wait.as_secs()),
        };
        let response = tokio::time::timeout(first_byte, self.send(Method::POST, path, None, &[]))
            .await
            .map_err(|_| no_answer(first_byte))??;
        let status = response.status();
        let (parts, mut body) = response.into_parts();
        if !status.is_success() {
            let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await;
            let body = body.ok().and_then(Result::ok).map(|b| b.to_bytes());
            return Err(self.refused(status, &body.unwrap_or_default()));
        }
        let written_err =
            |e: std::io::Error| CliError::Usage(format!("cannot write the file: {e}"));
        let mut written = 0u64;
        while let Some(frame) = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
            .await
            .map_err(|_| no_answer(REQUEST_TIMEOUT))?
        {
            let frame = frame.map_err(|e| self.connect_error(&e))?;
            if let Ok(data) = frame.into_data() {
                dest.write_all(&data).await.map_err(written_err)?;
                written += data.len() as u64;
            }
        }
        dest.sync_all().await.map_err(written_err)?;
        let expected = (parts.headers.get(header::CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if expected.is_some_and(|n| n != written) {
            return Err(CliError::Protocol(format!(
                "the transfer ended after {written} of {} bytes",
                expected.unwrap_or_default()
            )));
        }
        Ok(parts.headers)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<http::Response<Incoming>, CliError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("x-api-key", self.key.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Usage(format!("cannot build the request for {path}: {e}")))?;
        self.client
            .request(request)
            .await
            .map_err(|e| self.connect_error(&e))
    }

    /// A non-2xx answer as an error; a refused key (401) or role (403) also names the
    /// URL and where the key came from.
    fn refused(&self, status: StatusCode, body: &[u8]) -> CliError {
        match api_error(status, body) {
            CliError::Api {
                status: 401,
                message,
                ..
            } => CliError::Unauthorized {
                message,
                url: self.base.clone(),
                key_from: self.key_from.clone(),
            },
            CliError::Api {
                status: 403,
                code,
                message,
            } => CliError::Forbidden {
                code,
                message,
                url: self.base.clone(),
                key_from: self.key_from.clone(),
            },
            other => other,
        }
    }

    fn connect_error(&self, err: &(dyn std::error::Error + 'static)) -> CliError {
        // The innermost cause ("Connection refused") is the useful part.
        let mut reason = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        CliError::Connect {
            url: self.base.clone(),
            reason,
        }
    }
}

/// A non-2xx answer as an error, with the API's own code and message when it sent them.
fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
            String::from_utf8_lossy(body).trim().to_owned(),
        ),
    };
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned()
    } else {
        message
    };
    CliError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

/// Where a key given by `--api-key` came from: clap takes `FLEETMQ_API_KEY` for the
/// flag when the flag is absent.
fn flag_or_env(key: &str) -> &'static str {
    match std::env::var("FLEETMQ_API_KEY") {
        Ok(env) if env == key => "FLEETMQ_API_KEY",
        _ => "--api-key",
    }
}

async fn read_key_file(path: &Path) -> Result<String, CliError> {
    let no_key = |reason: String| CliError::NoKey {
        path: path.display().to_string(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| no_key(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(no_key("the file is empty".into()));
    }
    Ok(key.to_owned())
}

/// The HTTP(S) client: for `https://`, the public web PKI roots, or with `--ca` only the
/// certificates in that file (as `curl --cacert` does).
fn http_client(ca: Option<&Path>) -> Result<HttpClient, CliError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let tls_err = |e: &dyn std::fmt::Display| CliError::Usage(format!("cannot set up TLS: {e}"));
    let provider = rustls::crypto::ring::default_provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        None => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| tls_err(&e))?,
        Some(path) => {
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err(&e))?
                .with_root_certificates(ca_roots(path)?)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The certificates of `--ca FILE` as the only roots.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, CliError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let bad = |e: &dyn std::fmt::Display| CliError::Usage(format!("--ca {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no PEM certificate found"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        assert_eq!(
            url_for_listen("0.0.0.0:8080".parse().unwrap(), false),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            url_for_listen("[::]:9".parse().unwrap(), false),
            "http://[::1]:9"
        );
        assert_eq!(
            url_for_listen("0.0.0.0:8443".parse().unwrap(), true),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            url_for_listen("10.0.0.5:8080".parse().unwrap(), false),
            "http://10.0.0.5:8080"
        );
    }

    #[test]
    fn error_bodies_keep_the_apis_code_and_message() {
        let body = br#"{"error":{"code":"not_found","message":"device \"x\" not found"}}"#;
        let err = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(err.to_string(), r#"device "x" not found (404 not_found)"#);
        assert_eq!(err.exit_code(), 1);
        let err = api_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(err.to_string(), "upstream down (502 bad_gateway)");
    }

    #[test]
    fn components_are_escaped() {
        assert_eq!(enc("sensor-1.a_b~"), "sensor-1.a_b~");
        assert_eq!(enc("a/b c:d"), "a%2Fb%20c%3Ad");
    }
}
