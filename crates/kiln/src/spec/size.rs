use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A size in bytes, parsed from `512M`, `2G`, `1T`, `4096` (bytes), `1.5G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ByteSize(u64);

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;
const TIB: u64 = GIB * 1024;
/// Sizes above this are refused: no VM or disk kiln makes is that large.
const MAX_BYTES: u64 = 64 * TIB;

/// Why a size's text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The text is not a non-negative number with an optional unit B, K, M, G or T.
    #[error("invalid size {input:?}: {reason}")]
    Invalid {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The size is over 64 TiB, the most kiln accepts.
    #[error("size {input:?} is larger than the 64T kiln accepts")]
    TooLarge {
        /// The text as given.
        input: String,
    },
}

impl ByteSize {
    /// A size of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }
    /// A size of `mib` MiB, saturating at `u64::MAX` bytes.
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib.saturating_mul(MIB))
    }
    /// A size of `gib` GiB, saturating at `u64::MAX` bytes.
    pub const fn from_gib(gib: u64) -> Self {
        Self(gib.saturating_mul(GIB))
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
    /// Whole MiB, rounded down.
    pub const fn mib(self) -> u64 {
        self.0 / MIB
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, SizeError> {
        let invalid = |reason| SizeError::Invalid {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if s.starts_with('-') {
            return Err(invalid("a size cannot be negative"));
        }
        if number.is_empty() {
            return Err(invalid("it must start with a number"));
        }
        let multiplier = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => KIB,
            "M" | "MB" | "MIB" => MIB,
            "G" | "GB" | "GIB" => GIB,
            "T" | "TB" | "TIB" => TIB,
            _ => return Err(invalid("the unit must be one of B, K, M, G, T")),
        };
        let value: f64 = number.parse().map_err(|_| invalid("not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes > MAX_BYTES as f64 {
            return Err(SizeError::TooLarge {
                input: input.to_owned(),
            });
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{}G", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{}M", b / MIB)
        } else if b >= KIB && b.is_multiple_of(KIB) {
            write!(f, "{}K", b / KIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("512M".parse::<ByteSize>().unwrap().mib(), 512);
        assert_eq!("2G".parse::<ByteSize>().unwrap().mib(), 2048);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().mib(), 1536);
        assert_eq!("4096".parse::<ByteSize>().unwrap().bytes(), 4096);
        assert_eq!("1GiB".parse::<ByteSize>().unwrap(), ByteSize::from_gib(1));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "-1G", "G", "12X", "1..2G", "1PB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert!(matches!(
            "100000T".parse::<ByteSize>(),
            Err(SizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn displays_the_largest_whole_unit() {
        assert_eq!(ByteSize::from_mib(512).to_string(), "512M");
        assert_eq!(ByteSize::from_gib(2).to_string(), "2G");
    }
}
