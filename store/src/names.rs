//! Validated names: volume names, snapshot tags and namespaces are RFC 1123
//! labels (lowercase `a-z0-9-`, 1–63 characters, alphanumeric at both ends).

use std::fmt;

use crate::error::{Result, StoreError};

/// The longest valid name.
pub(crate) const MAX_NAME_LEN: usize = 63;

const RULE: &str = "must be an RFC 1123 label: 1-63 characters of lowercase a-z, 0-9 and '-', starting and ending with a letter or digit";

fn check(kind: &'static str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = (1..=MAX_NAME_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            kind,
            name: name.to_string(),
            rule: RULE,
        })
    }
}

macro_rules! label_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                check($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// A volume's name.
    VolumeName,
    "volume name"
);
label_type!(
    /// A snapshot's tag (the part after `@`).
    SnapshotTag,
    "snapshot tag"
);
label_type!(
    /// A tenant namespace; tokens map to one each.
    Namespace,
    "namespace"
);

impl Namespace {
    /// The namespace served when no token file is configured.
    pub fn default_ns() -> Self {
        Self("default".to_string())
    }
}

/// `VOLUME@TAG`, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotRef {
    /// The volume.
    pub volume: VolumeName,
    /// The tag.
    pub tag: SnapshotTag,
}

impl std::str::FromStr for SnapshotRef {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        let (volume, tag) = s.split_once('@').ok_or_else(|| StoreError::InvalidName {
            kind: "snapshot reference",
            name: s.to_string(),
            rule: "must be written VOLUME@TAG",
        })?;
        Ok(Self {
            volume: VolumeName::new(volume)?,
            tag: SnapshotTag::new(tag)?,
        })
    }
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.volume, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc1123_labels() {
        for ok in ["a", "vol-1", "0", "abc-def-123", &"a".repeat(63)] {
            VolumeName::new(ok).unwrap();
        }
    }

    #[test]
    fn rejects_everything_else_with_the_rule() {
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a@b",
            "é",
            " a",
            &"a".repeat(64),
        ] {
            let err = VolumeName::new(bad).unwrap_err();
            assert!(err.to_string().contains("RFC 1123"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_snapshot_refs() {
        let r: SnapshotRef = "vol@tag-1".parse().unwrap();
        assert_eq!(r.to_string(), "vol@tag-1");
        assert!("vol".parse::<SnapshotRef>().is_err());
        assert!("vol@".parse::<SnapshotRef>().is_err());
        assert!("Vol@x".parse::<SnapshotRef>().is_err());
    }
}
