//! Which webhooks a fleet event goes to: the `[[webhooks]]` entries and their checks,
//! and the `webhooks.events` filter syntax (`device.online`, `command.*`, `*`) that the
//! live stream shares.

use std::fmt;

use super::super::webhooks::redact_url;

/// One `[[webhooks]]` entry.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// HMAC-SHA256 key for `X-Fleetmq-Signature`.
    pub secret: String,
    /// Event types to send: exact (`device.online`) or prefix (`command.*`); `*` is
    /// every type. `None`: every type.
    pub events: Option<Vec<String>>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

/// Why a `[[webhooks]]` entry is invalid; messages name the config key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookConfigError {
    Url { url: String },
    EmptySecret { url: String },
    NoEvents { url: String },
    Pattern { url: String, pattern: String },
    Duplicate { url: String },
}

impl WebhookConfigError {
    /// The config key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            WebhookConfigError::Url { .. } | WebhookConfigError::Duplicate { .. } => "webhooks.url",
            WebhookConfigError::EmptySecret { .. } => "webhooks.secret",
            WebhookConfigError::NoEvents { .. } | WebhookConfigError::Pattern { .. } => {
                "webhooks.events"
            }
        }
    }

    /// What is wrong with the key's value, naming the entry by its URL.
    pub fn reason(&self) -> String {
        match self {
            WebhookConfigError::Url { url } => {
                format!("{url:?} is not an http(s) URL with a host")
            }
            WebhookConfigError::EmptySecret { url } => format!("must not be empty for {url:?}"),
            WebhookConfigError::NoEvents { url } => {
                format!("empty for {url:?}; omit it for every event")
            }
            WebhookConfigError::Pattern { url, pattern } => format!(
                "{pattern:?} (for {url:?}) is not an event type, a prefix ending in `.*`, or `*`"
            ),
            WebhookConfigError::Duplicate { url } => format!("{url:?} is configured twice"),
        }
    }
}

impl fmt::Display for WebhookConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid value for `{}`: {}", self.key(), self.reason())
    }
}

impl std::error::Error for WebhookConfigError {}

impl WebhookConfig {
    /// Checks one entry: an http(s) URL with a host, a non-empty secret, and event
    /// patterns that are a type, a `prefix.*` or `*`.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        let url = || self.url.clone();
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| WebhookConfigError::Url { url: url() })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(WebhookConfigError::Url { url: url() });
        }
        if self.secret.is_empty() {
            return Err(WebhookConfigError::EmptySecret { url: url() });
        }
        match &self.events {
            Some(patterns) if patterns.is_empty() => {
                Err(WebhookConfigError::NoEvents { url: url() })
            }
            Some(patterns) => patterns.iter().try_for_each(|p| {
                Pattern::parse(p)
                    .map(drop)
                    .ok_or_else(|| WebhookConfigError::Pattern {
                        url: url(),
                        pattern: p.clone(),
                    })
            }),
            None => Ok(()),
        }
    }
}

/// Validates every entry and that no URL appears twice (each URL has one ordered queue).
pub fn validate_webhooks(hooks: &[WebhookConfig]) -> Result<(), WebhookConfigError> {
    for (i, hook) in hooks.iter().enumerate() {
        hook.validate()?;
        if hooks[..i].iter().any(|h| h.url == hook.url) {
            return Err(WebhookConfigError::Duplicate {
                url: hook.url.clone(),
            });
        }
    }
    Ok(())
}

/// One parsed `events` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    /// `command.*` is kept as `command.`.
    Prefix(String),
}

impl Pattern {
    fn parse(p: &str) -> Option<Pattern> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        };
        match p.strip_suffix(".*") {
            _ if p == "*" => Some(Pattern::Any),
            Some(prefix) if valid(prefix) => Some(Pattern::Prefix(format!("{prefix}."))),
            None if valid(p) => Some(Pattern::Exact(p.to_owned())),
            _ => None,
        }
    }

    fn matches(&self, kind: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == kind,
            Pattern::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

/// Which event types a URL (or a live stream) receives: the `webhooks.events` syntax.
#[derive(Debug, Clone)]
pub struct EventFilter(Option<Vec<Pattern>>);

/// An event type pattern that is not a type, a `prefix.*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} is not an event type, a prefix ending in `.*`, or `*`")]
pub struct InvalidPattern {
    pub pattern: String,
}

impl EventFilter {
    /// Unparsable patterns (which [`WebhookConfig::validate`] rejects) match nothing.
    pub(crate) fn new(patterns: Option<&[String]>) -> EventFilter {
        EventFilter(patterns.map(|ps| ps.iter().filter_map(|p| Pattern::parse(p)).collect()))
    }

    /// Every event type.
    pub fn any() -> EventFilter {
        EventFilter(None)
    }

    /// A filter from patterns such as `device.online`, `command.*` or `*`; the first
    /// pattern that is none of these is the error.
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<EventFilter, InvalidPattern> {
        let parsed = patterns
            .into_iter()
            .map(|p| {
                Pattern::parse(p).ok_or_else(|| InvalidPattern {
                    pattern: p.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventFilter(Some(parsed)))
    }

    /// Whether one of the patterns is exactly `kind` (not a prefix or `*`). With no
    /// patterns (every type), false.
    pub fn names(&self, kind: &str) -> bool {
        self.0.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| matches!(p, Pattern::Exact(e) if e == kind))
        })
    }

    /// Whether events of type `kind` pass.
    pub fn matches(&self, kind: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(kind)))
    }
}
