//! Go release versions as the toolchain spells them ("go1.23.4", "go1.26rc1", "devel go1.27-abc").

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Exactly what the binary says, e.g. "go1.26.8" or "go1.26rc1".
    pub raw: String,
}

/// The oldest release parkscope reads: register ABI on amd64, `g.parentGoid`, and the offsets
/// table starts here.
pub const OLDEST_SUPPORTED: (u32, u32) = (1, 21);

impl GoVersion {
    pub fn parse(raw: &str) -> Option<GoVersion> {
        let text = raw.trim();
        // "devel go1.27-abcdef Tue ..." → "go1.27-abcdef"
        let text = text.strip_prefix("devel ").unwrap_or(text);
        let rest = text.strip_prefix("go")?;
        let mut numbers = Vec::with_capacity(3);
        for part in rest.splitn(3, '.') {
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            if digits.is_empty() {
                break;
            }
            numbers.push(digits.parse::<u32>().ok()?);
            if digits.len() != part.len() {
                // "26rc1", "27-abc", "8 X:nocoverageredesign": the rest is not a version part.
                break;
            }
        }
        if numbers.len() < 2 {
            return None;
        }
        Some(GoVersion {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers.get(2).copied().unwrap_or(0),
            raw: raw.trim().to_string(),
        })
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// "1.23" — the key of the per-release offsets table.
    pub fn release(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_candidate_and_devel_spellings() {
        let v = GoVersion::parse("go1.26.8").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 26, 8));
        let v = GoVersion::parse("go1.26rc1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 26, 0));
        let v = GoVersion::parse("devel go1.27-1a2b3c Mon Nov 2 2026").unwrap();
        assert_eq!((v.major, v.minor), (1, 27));
        let v = GoVersion::parse("go1.21.13 X:boringcrypto").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 21, 13));
        assert!(GoVersion::parse("1.21").is_none());
        assert!(GoVersion::parse("go").is_none());
    }

    #[test]
    fn orders_by_release() {
        let old = GoVersion::parse("go1.20.14").unwrap();
        assert!(!old.at_least(1, 21));
        assert!(GoVersion::parse("go1.21.0").unwrap().at_least(1, 21));
        assert_eq!(GoVersion::parse("go1.24.3").unwrap().release(), "1.24");
    }
}
