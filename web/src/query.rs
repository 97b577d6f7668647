//! Query strings and path segments: decoding, and the paging parameters every list
//! route shares.

use crate::error::ApiError;

/// `limit` when none is given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` a list route accepts.
pub(crate) const MAX_LIMIT: usize = 1000;

/// Decoded `name=value` pairs of a query string, in order.
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `query`, refusing any parameter not in `allowed` so a misspelt filter
    /// is an error rather than silently ignored.
    pub(crate) fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((unknown, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {unknown:?}; this route takes {}",
                allowed.join(", ")
            )));
        }
        Ok(Query { pairs })
    }

    /// The single value of `name`; given twice is an error.
    pub(crate) fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::BadRequest(format!(
                "query parameter {name:?} given more than once"
            )));
        }
        Ok(first)
    }

    /// Every value of `name`, in order.
    pub(crate) fn all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` and `cursor`.
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        let limit = match self.one("limit")? {
            None => DEFAULT_LIMIT,
            Some(text) => {
                let limit: usize = text.parse().map_err(|_| {
                    ApiError::BadRequest(format!("limit: {text:?} is not a number"))
                })?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(ApiError::Unprocessable(format!(
                        "limit: must be between 1 and {MAX_LIMIT}"
                    )));
                }
                limit
            }
        };
        let cursor = self.one("cursor")?.map(str::to_owned);
        Ok(Page { limit, cursor })
    }

    /// A `true`/`false` parameter.
    pub(crate) fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name}: {other:?} is not true or false"
            ))),
        }
    }
}

/// Paging: at most `limit` items after `cursor` (the last key of the previous page).
pub(crate) struct Page {
    pub(crate) limit: usize,
    pub(crate) cursor: Option<String>,
}

/// Splits a request path into percent-decoded segments (without the leading `/`).
pub(crate) fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ApiError::BadRequest("request path is not valid UTF-8".to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_and_bounds() {
        let page = Query::parse(None, &["limit", "cursor"])
            .unwrap()
            .page()
            .unwrap();
        assert_eq!((page.limit, page.cursor), (DEFAULT_LIMIT, None));
        let q = Query::parse(Some("limit=5&cursor=a%3Ab"), &["limit", "cursor"]).unwrap();
        let page = q.page().unwrap();
        assert_eq!((page.limit, page.cursor.as_deref()), (5, Some("a:b")));
        let bad = |qs| {
            Query::parse(Some(qs), &["limit", "cursor"])
                .unwrap()
                .page()
                .err()
        };
        assert!(matches!(bad("limit=x"), Some(ApiError::BadRequest(_))));
        assert!(matches!(bad("limit=0"), Some(ApiError::Unprocessable(_))));
        assert!(matches!(
            bad("limit=1001"),
            Some(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            bad("limit=1&limit=2"),
            Some(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn unknown_parameter_is_refused() {
        assert!(Query::parse(Some("onlin=true"), &["online"]).is_err());
    }

    #[test]
    fn segments_are_decoded() {
        let segs = path_segments("/api/v1/clients/a%20b%2Fc").unwrap();
        assert_eq!(segs, ["api", "v1", "clients", "a b/c"]);
        assert!(path_segments("/x/%ff").is_err());
    }
}
