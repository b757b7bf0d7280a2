//! Bearer tokens and namespaces.
//!
//! Without a token file every request is served in namespace `default`.
//! With one, each request must carry `Authorization: Bearer TOKEN`, and the
//! token's namespace is the only one it sees: other namespaces' volumes
//! simply do not exist for it (404, no names leaked).
//!
//! Token file format: one `TOKEN NAMESPACE` pair per line, optionally
//! followed by `admin`; blank lines and lines starting with `#` are
//! ignored. Only admin tokens (or anyone, without a token file) run a
//! garbage collection or a scrub of the whole store ([`Admin`]).

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
    tokens: Option<HashMap<String, Grant>>,
}

/// What one token may do.
#[derive(Debug, Clone)]
struct Grant {
    namespace: Namespace,
    admin: bool,
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
            let (Some(token), Some(ns), role, None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected `TOKEN NAMESPACE [admin]`".into()));
            };
            let admin = match role {
                None => false,
                Some("admin") => true,
                Some(other) => return Err(bad(format!("unknown role {other:?}: the only role is `admin`"))),
            };
            let namespace = Namespace::new(ns).map_err(|e| bad(e.to_string()))?;
            tokens.insert(token.to_string(), Grant { namespace, admin });
        }
        Ok(Self { tokens: Some(tokens) })
    }

    /// The namespace a request acts in, from its Authorization header.
    pub fn namespace(&self, authorization: Option<&str>) -> Result<Namespace, ApiError> {
        self.grant(authorization).map(|g| g.namespace)
    }

    /// True when the caller may act on the whole store.
    pub fn is_admin(&self, authorization: Option<&str>) -> Result<bool, ApiError> {
        self.grant(authorization).map(|g| g.admin)
    }

    fn grant(&self, authorization: Option<&str>) -> Result<Grant, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Grant {
                namespace: Namespace::default_ns(),
                admin: true,
            });
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

/// The request's `Authorization` header, if it is text.
fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The caller's namespace, extracted from the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Namespace);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.auth.namespace(authorization(parts)).map(Caller)
    }
}

/// The caller's namespace and whether its token is an admin token.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token's namespace.
    pub namespace: Namespace,
    /// An admin token, or no token file at all.
    pub admin: bool,
}

impl Admin {
    /// Refuses a non-admin caller with 403.
    pub fn require(&self, what: &'static str) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(what))
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let grant = state.auth.grant(authorization(parts))?;
        Ok(Admin {
            namespace: grant.namespace,
            admin: grant.admin,
        })
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
        std::fs::write(&path, "tok ns root\n").unwrap();
        assert!(Auth::from_file(&path).is_err());
        std::fs::write(&path, "tok-a ns-a admin\ntok-b ns-b\n").unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth.is_admin(Some("Bearer tok-a")).unwrap());
        assert!(!auth.is_admin(Some("Bearer tok-b")).unwrap());
        assert!(Auth::open().is_admin(None).unwrap());
        assert_eq!(Auth::open().namespace(None).unwrap().as_str(), "default");
    }
}
