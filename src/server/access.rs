//! Access control for a public deployment: API keys on the API (`/v1/*`, and `/metrics` when
//! asked), and CORS only for the origins named.
//!
//! - A request to a guarded route needs `Authorization: Bearer KEY` with one of the keys; keys
//!   are compared through their SHA-256 digests, every key every time, so the time taken says
//!   nothing about how much of a key matched. A missing or wrong key gets 401 with the API's JSON
//!   error and `WWW-Authenticate: Bearer`. `/`, `/openapi.json`, `/healthz` and `/readyz` stay
//!   open (the web page asks for the key itself).
//! - Without `cors_origins` no CORS header is ever sent (browsers keep other sites' pages out).
//!   With them, a request whose `Origin` is listed (or any, for `*`) is answered with
//!   `Access-Control-Allow-Origin`, and its preflight (`OPTIONS` with
//!   `Access-Control-Request-Method`) with 204 and the allowed methods and headers, before any key
//!   is asked for (browsers send none with a preflight).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;

/// Who may use the server.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// SHA-256 digests of the accepted API keys; none: the API is open.
    key_digests: Vec<[u8; 32]>,
    /// Whether `/metrics` needs a key too.
    pub protect_metrics: bool,
    /// Origins answered with CORS headers (`*`: any).
    pub cors_origins: Vec<String>,
}

impl AccessPolicy {
    /// A policy accepting `keys` (none: open). Empty keys are refused.
    pub fn new(
        keys: &[String],
        protect_metrics: bool,
        cors_origins: Vec<String>,
    ) -> Result<Self, String> {
        if keys.iter().any(|k| k.trim().is_empty()) {
            return Err("an API key may not be empty".into());
        }
        Ok(Self {
            key_digests: keys.iter().map(|k| digest(k.trim())).collect(),
            protect_metrics,
            cors_origins,
        })
    }

    /// Whether any key is required.
    pub fn has_keys(&self) -> bool {
        !self.key_digests.is_empty()
    }

    fn guards(&self, path: &str) -> bool {
        self.has_keys()
            && (path == "/v1"
                || path.starts_with("/v1/")
                || (self.protect_metrics && path == "/metrics"))
    }

    /// Whether `presented` is one of the keys (every key compared, in constant time each).
    fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        let mut found = 0u8;
        for k in &self.key_digests {
            let diff = k.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found |= u8::from(diff == 0);
        }
        found == 1
    }

    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let o = origin.to_str().ok()?;
        self.cors_origins
            .iter()
            .any(|a| a == "*" || a == o)
            .then(|| origin.clone())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The keys of a key file: one per line; blank lines and lines starting with `#` are skipped.
pub fn read_key_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn unauthorized(message: &str, invalid: bool) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    let challenge = if invalid {
        r#"Bearer realm="smallcap", error="invalid_token""#
    } else {
        r#"Bearer realm="smallcap""#
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// The middleware: CORS preflights, then keys, then CORS headers on the answer.
pub(crate) async fn authorize(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let policy = &state.config.access;
    let origin = policy.allowed_origin(req.headers());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, &origin) {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return resp;
    }
    let mut resp = if policy.guards(req.uri().path()) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            None => unauthorized(
                "this server needs an API key: send Authorization: Bearer KEY",
                false,
            ),
            Some(key) if !policy.accepts(key) => unauthorized("the API key is not valid", true),
            Some(_) => next.run(req).await,
        }
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_exactly_and_only_on_guarded_routes() {
        let p = AccessPolicy::new(&["k1".into(), "secret two".into()], false, vec![]).unwrap();
        assert!(p.accepts("k1") && p.accepts("secret two"));
        assert!(!p.accepts("k") && !p.accepts("k12") && !p.accepts("") && !p.accepts("K1"));
        assert!(p.guards("/v1/captions") && p.guards("/v1/datastores"));
        assert!(!p.guards("/healthz") && !p.guards("/metrics") && !p.guards("/v1x"));
        let open = AccessPolicy::new(&[], true, vec![]).unwrap();
        assert!(!open.guards("/v1/captions") && !open.guards("/metrics"));
        assert!(AccessPolicy::new(&[" ".into()], false, vec![]).is_err());
    }

    #[test]
    fn key_files_skip_blank_lines_and_comments() {
        assert_eq!(
            read_key_file("# keys\nalpha\n\n  beta  \n#gamma\n"),
            vec!["alpha".to_string(), "beta".to_string()]
        );
    }
}
