//! Content identifiers: 32-byte BLAKE3 hashes with a typed wrapper per use.

use std::fmt;

/// Error parsing a hex content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid content id {text:?}: expected 64 hex digits")]
pub struct ParseIdError {
    /// The text that failed to parse.
    pub text: String,
}

/// Behaviour shared by every 32-byte content id.
pub trait ContentId: Copy + Eq + std::hash::Hash + fmt::Debug {
    /// The raw hash bytes.
    fn as_bytes(&self) -> &[u8; 32];
    /// Wraps raw hash bytes.
    fn from_bytes(bytes: [u8; 32]) -> Self;
}

/// Declares a typed 32-byte content id with hex `Display`, `FromStr`, serde
/// as a hex string, and an all-zero sentinel `ZERO` that no real BLAKE3
/// output takes (2^-256).
#[macro_export]
macro_rules! content_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Sentinel for "all zeros": never stored, never fetched.
            pub const ZERO: Self = Self([0u8; 32]);

            /// True for the all-zero sentinel.
            pub fn is_zero(&self) -> bool {
                self.0 == [0u8; 32]
            }

            /// Lower-case hex of the full id.
            pub fn to_hex(&self) -> String {
                $crate::__hex::encode(self.0)
            }
        }

        impl $crate::ContentId for $name {
            fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // Twelve hex digits identify an object in logs without noise.
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                $crate::__hex::decode_to_slice(s, &mut out).map_err(|_| $crate::ParseIdError {
                    text: s.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as $crate::__serde::Deserialize>::deserialize(d)?;
                text.parse().map_err($crate::__serde::de::Error::custom)
            }
        }
    };
}

content_id!(
    /// BLAKE3 hash of a chunk's plaintext: the chunk's identity and object key.
    ChunkId
);

impl ChunkId {
    /// Hashes a chunk's plaintext.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}
