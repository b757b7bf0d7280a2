//! NBD over TLS with pre-shared keys (NBD_OPT_STARTTLS), the convention of
//! nbdkit, qemu and libnbd: keys in psktool's `IDENTITY:HEXKEY` format, the
//! identity names who the client is. Built on the system OpenSSL, which
//! (unlike rustls) supports external PSKs and interoperates with the GnuTLS
//! clients (TLS 1.3 with a PSK, or TLS 1.2 PSK cipher suites).
//!
//! No session tickets are issued, so after the handshake the stream carries
//! only application data. Records are made in memory ([`crate::bridge`]),
//! so both transports can carry them.

use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVersion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::bridge::{Bridge, BridgedTls};

/// Shortest key accepted (bits / 8): psktool makes 256-bit keys.
const MIN_KEY_BYTES: usize = 16;
/// Longest key OpenSSL hands to a PSK callback.
const MAX_KEY_BYTES: usize = 256;
/// Longest identity a TLS PSK may carry.
const MAX_IDENTITY: usize = 128;

/// Why a key file or the TLS context could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The key file could not be read.
    #[error("reading TLS-PSK file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `IDENTITY:HEXKEY`.
    #[error("TLS-PSK file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds no key.
    #[error("TLS-PSK file {0} holds no keys (expected lines IDENTITY:HEXKEY, as psktool writes)")]
    Empty(PathBuf),
    /// OpenSSL refused the settings.
    #[error("setting up TLS: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// Parses psktool's format: one `IDENTITY:HEXKEY` per line; blank lines and
/// lines starting with `#` are skipped. Identities must be unique.
pub fn parse_psk_file(path: &Path, text: &str) -> Result<HashMap<String, Vec<u8>>, TlsError> {
    let mut keys = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| TlsError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let Some((identity, hex)) = line.rsplit_once(':') else {
            return Err(bad("expected IDENTITY:HEXKEY".into()));
        };
        if identity.is_empty() || identity.len() > MAX_IDENTITY {
            return Err(bad(format!("identity must be 1..={MAX_IDENTITY} bytes")));
        }
        let key = hex::decode(hex).map_err(|_| bad("the key is not hexadecimal".into()))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(bad(format!(
                "the key has {} bytes; use {MIN_KEY_BYTES}..={MAX_KEY_BYTES} (psktool -u NAME -p FILE makes 32)",
                key.len()
            )));
        }
        if keys.insert(identity.to_string(), key).is_some() {
            return Err(bad(format!("identity {identity:?} appears twice")));
        }
    }
    if keys.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf()));
    }
    Ok(keys)
}

/// The server side of TLS-PSK: which identities exist and their keys.
pub struct TlsPsk {
    context: SslContext,
    /// Where the PSK callback records the identity it found a key for.
    identity_slot: Index<Ssl, String>,
    identities: Vec<String>,
}

impl std::fmt::Debug for TlsPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPsk")
            .field("identities", &self.identities)
            .finish_non_exhaustive()
    }
}

impl TlsPsk {
    /// Loads a psktool key file.
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_keys(parse_psk_file(path, &text)?)
    }

    /// A server accepting these identities and keys.
    pub fn from_keys(keys: HashMap<String, Vec<u8>>) -> Result<Self, TlsError> {
        let mut identities: Vec<String> = keys.keys().cloned().collect();
        identities.sort();
        let identity_slot = Ssl::new_ex_index::<String>()?;
        let mut b = SslContext::builder(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // TLS 1.2: PSK suites only (there is no certificate); TLS 1.3 uses
        // its own suites with the PSK found by the callback below.
        b.set_cipher_list("ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL:!CBC:@STRENGTH")?;
        b.set_ciphersuites("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")?;
        b.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
        b.set_num_tickets(0)?;
        b.set_psk_server_callback(move |ssl, identity, out| {
            let found = identity
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|id| keys.get_key_value(id));
            match found {
                Some((id, key)) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    // Kept here: OpenSSL does not report the identity of a
                    // TLS 1.2 PSK session afterwards.
                    ssl.set_ex_data(identity_slot, id.clone());
                    Ok(key.len())
                }
                // Zero length: unknown identity, the handshake fails.
                _ => Ok(0),
            }
        });
        Ok(Self {
            context: b.build(),
            identity_slot,
            identities,
        })
    }

    /// The identities that have a key, sorted.
    pub fn identities(&self) -> &[String] {
        &self.identities
    }

    /// Runs the server handshake on `stream`; returns the session (its
    /// records made in memory, see [`crate::bridge`]) and the client's PSK
    /// identity.
    pub(crate) async fn accept<S>(&self, stream: S) -> std::io::Result<(BridgedTls<S>, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(&self.context).map_err(std::io::Error::other)?;
        let session = SslStream::new(ssl, Bridge::default()).map_err(std::io::Error::other)?;
        let tls = BridgedTls::accept(session, stream).await?;
        let ssl = tls.session().ssl();
        let identity = ssl.ex_data(self.identity_slot).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "TLS session without a PSK identity",
            )
        })?;
        tracing::debug!(
            identity,
            version = ssl.version_str(),
            cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("?"),
            "NBD TLS session"
        );
        Ok((tls, identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HashMap<String, Vec<u8>>, TlsError> {
        parse_psk_file(Path::new("keys.psk"), text)
    }

    #[test]
    fn reads_psktool_lines_and_skips_comments() {
        let key = "00112233445566778899aabbccddeeff";
        let keys = parse(&format!("# tenants\nalice:{key}\n\nbob:{key}{key}\n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["alice"].len(), 16);
        assert_eq!(keys["bob"].len(), 32);
        assert_eq!(keys["alice"][15], 0xff);
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        let key = "00112233445566778899aabbccddeeff";
        for (text, needle) in [
            ("alice".to_string(), "line 1: expected IDENTITY:HEXKEY"),
            (
                format!("alice:{key}\nbob:zz{key}"),
                "line 2: the key is not hexadecimal",
            ),
            ("alice:0011".to_string(), "has 2 bytes"),
            (format!(":{key}"), "identity must be"),
            (format!("a:{key}\na:{key}"), "appears twice"),
            ("# nothing\n".to_string(), "holds no keys"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
