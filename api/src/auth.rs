//! Bearer tokens and namespaces.
//!
//! Without a token file every request is served in namespace `default`.
//! With one, each request must carry `Authorization: Bearer TOKEN`, and the
//! token's namespace is the only one it sees: other namespaces' volumes
//! simply do not exist for it (404, no names leaked).
//!
//! Token file format: one `TOKEN NAMESPACE` pair per line; blank lines and
//! lines starting with `#` are ignored.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cairn_store::Namespace;

use crate::error::ApiError;
use crate::AppState;

/// How requests are authenticated.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Option<HashMap<String, Namespace>>,
}

/// Problems with a token file.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("reading token file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("token file {path} line {line}: {reason}")]
    Line {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Auth {
    /// No token file: everyone is in namespace `default`.
    pub fn open() -> Self {
        Self { tokens: None }
    }

    /// True when tokens are required.
    pub fn is_enforced(&self) -> bool {
        self.tokens.is_some()
    }

    /// Loads a token file.
    pub fn from_file(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| AuthFileError::Line {
                path: path.display().to_string(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(token), Some(ns), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `TOKEN NAMESPACE`".into()));
            };
            let ns = Namespace::new(ns).map_err(|e| bad(e.to_string()))?;
            tokens.insert(token.to_string(), ns);
        }
        Ok(Self { tokens: Some(tokens) })
    }

    /// The namespace a request acts in, from its Authorization header.
    pub fn namespace(&self, authorization: Option<&str>) -> Result<Namespace, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Namespace::default_ns());
        };
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        tokens
            .get(token.trim())
            .cloned()
            .ok_or(ApiError::Unauthorized("unknown token"))
    }
}

/// The caller's namespace, extracted from the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Namespace);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.auth.namespace(header).map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_maps_tokens_to_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\nsecret-a team-a\n\nsecret-b team-b\n").unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert_eq!(
            auth.namespace(Some("Bearer secret-a")).unwrap().as_str(),
            "team-a"
        );
        assert_eq!(
            auth.namespace(Some("Bearer secret-b")).unwrap().as_str(),
            "team-b"
        );
        assert!(auth.namespace(Some("Bearer nope")).is_err());
        assert!(auth.namespace(None).is_err());
        std::fs::write(&path, "lonely\n").unwrap();
        assert!(Auth::from_file(&path).is_err());
        std::fs::write(&path, "tok Bad_NS\n").unwrap();
        assert!(Auth::from_file(&path).is_err());
        assert_eq!(Auth::open().namespace(None).unwrap().as_str(), "default");
    }
}
