//! `.go.buildinfo`: the Go version and the build settings (`go version -m` prints the same).
//!
//! Layout (Go ≥ 1.18): a 32-byte header — 14-byte magic "\xff Go buildinf:", pointer size, flags
//! (bit 1: strings inline) — then the version and the module info as uvarint-length-prefixed
//! strings. Older releases stored pointers instead; parkscope refuses them with a clear message.

use std::collections::BTreeMap;

use crate::error::InspectError;
use crate::gobin::elf::ElfImage;

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// Module info is wrapped in 16-byte sentinels so it can be found in a raw binary.
const MODINFO_SENTINEL_LEN: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// "go1.26.8"
    pub go_version: String,
    /// Main module path, e.g. "parkscope.dev/fixtures".
    pub main_path: Option<String>,
    /// `build` lines of the module info: "-buildmode" → "pie", "CGO_ENABLED" → "1", …
    pub settings: BTreeMap<String, String>,
}

impl BuildInfo {
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    pub fn goarch(&self) -> Option<&str> {
        self.setting("GOARCH")
    }

    pub fn cgo_enabled(&self) -> bool {
        self.setting("CGO_ENABLED") == Some("1")
    }

    pub fn trimpath(&self) -> bool {
        self.setting("-trimpath") == Some("true")
    }

    pub fn buildmode(&self) -> Option<&str> {
        self.setting("-buildmode")
    }

    pub fn ldflags(&self) -> Option<&str> {
        self.setting("-ldflags")
    }
}

/// Find the build info in an ELF image: the `.go.buildinfo` section, or (section headers can be
/// stripped by other tools) a 16-byte aligned magic anywhere in the file.
pub fn read(image: &ElfImage<'_>) -> Result<BuildInfo, InspectError> {
    if let Some(section) = image.section(".go.buildinfo") {
        return parse(section.data);
    }
    let data = image.bytes();
    let found = data
        .as_chunks::<16>()
        .0
        .iter()
        .position(|chunk| chunk.starts_with(MAGIC))
        .map(|i| i * 16);
    match found {
        Some(start) => parse(&data[start..]),
        None => Err(InspectError::NotGo(
            "no Go build info (.go.buildinfo) found; was this built by the Go toolchain?".into(),
        )),
    }
}

/// Parse the bytes of a `.go.buildinfo` blob (header first).
pub fn parse(blob: &[u8]) -> Result<BuildInfo, InspectError> {
    if blob.len() < HEADER_LEN || &blob[..MAGIC.len()] != MAGIC {
        return Err(InspectError::NotGo("build info has no Go magic".into()));
    }
    let pointer_size = blob[14];
    let flags = blob[15];
    if flags & FLAG_INLINE_STRINGS == 0 {
        return Err(InspectError::UnsupportedGoVersion {
            version: "older than go1.18".into(),
            why: format!(
                "build info uses the pre-1.18 pointer format (pointer size {pointer_size}); \
                 parkscope supports Go 1.21 and newer"
            ),
        });
    }
    let mut rest = &blob[HEADER_LEN..];
    let version = read_varint_string(&mut rest)
        .ok_or_else(|| InspectError::NotGo("truncated Go version in build info".into()))?;
    let modinfo = read_varint_string(&mut rest).unwrap_or_default();
    let mut info = parse_modinfo(&strip_sentinels(&modinfo));
    info.go_version = version;
    Ok(info)
}

fn read_uvarint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

fn read_varint_string(buf: &mut &[u8]) -> Option<String> {
    let len = usize::try_from(read_uvarint(buf)?).ok()?;
    let bytes = buf.get(..len)?;
    *buf = &buf[len..];
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn strip_sentinels(modinfo: &str) -> String {
    let bytes = modinfo.as_bytes();
    if bytes.len() >= 2 * MODINFO_SENTINEL_LEN {
        String::from_utf8_lossy(&bytes[MODINFO_SENTINEL_LEN..bytes.len() - MODINFO_SENTINEL_LEN])
            .into_owned()
    } else {
        String::new()
    }
}

/// The text form of debug.BuildInfo: tab-separated lines "path", "mod", "dep", "build".
fn parse_modinfo(text: &str) -> BuildInfo {
    let mut info = BuildInfo::default();
    for line in text.lines() {
        let mut fields = line.splitn(2, '\t');
        match (fields.next(), fields.next()) {
            (Some("path"), Some(path)) => info.main_path = Some(path.to_string()),
            (Some("build"), Some(setting)) => {
                let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
                info.settings
                    .insert(key.to_string(), unquote(value).to_string());
            }
            _ => {}
        }
    }
    info
}

/// Values with spaces are Go-quoted (`-ldflags="-s -w"`).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Fuzz entry point: arbitrary bytes must never panic the parser.
pub fn fuzz_parse(data: &[u8]) {
    let _ = parse(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut out = Vec::from(&MAGIC[..]);
        out.push(8);
        out.push(FLAG_INLINE_STRINGS);
        out.resize(HEADER_LEN, 0);
        for s in [version.as_bytes(), modinfo.as_bytes()] {
            let mut len = s.len();
            loop {
                let byte = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(s);
        }
        out
    }

    #[test]
    fn parses_version_and_build_settings() {
        let modinfo = format!(
            "{}path\texample.com/svc\nmod\texample.com/svc\t(devel)\t\nbuild\t-buildmode=pie\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=1\nbuild\tGOARCH=amd64\nbuild\t-trimpath=true\n{}",
            "0".repeat(16),
            "1".repeat(16)
        );
        let info = parse(&blob("go1.24.11", &modinfo)).unwrap();
        assert_eq!(info.go_version, "go1.24.11");
        assert_eq!(info.main_path.as_deref(), Some("example.com/svc"));
        assert_eq!(info.buildmode(), Some("pie"));
        assert_eq!(info.ldflags(), Some("-s -w"));
        assert!(info.cgo_enabled());
        assert!(info.trimpath());
        assert_eq!(info.goarch(), Some("amd64"));
    }

    #[test]
    fn refuses_pre_118_pointer_format_and_garbage() {
        let mut old = blob("go1.16", "");
        old[15] = 0;
        assert!(matches!(
            parse(&old),
            Err(InspectError::UnsupportedGoVersion { .. })
        ));
        assert!(matches!(parse(b"hello"), Err(InspectError::NotGo(_))));
        // A length prefix longer than the blob must not panic.
        let mut truncated = blob("go1.22.1", "");
        truncated[HEADER_LEN] = 0x7f;
        truncated.truncate(HEADER_LEN + 3);
        assert!(parse(&truncated).is_err());
    }

    #[test]
    fn reads_build_info_of_every_test_binary() {
        for bin in crate::testbins::all() {
            let data = std::fs::read(&bin.path).unwrap();
            let image = ElfImage::parse(&data).unwrap();
            let info = read(&image).unwrap();
            // GOEXPERIMENTs are appended: "go1.26.8-X:goroutineleakprofile".
            assert!(
                info.go_version.starts_with(&bin.go),
                "{}: {}",
                bin.path.display(),
                info.go_version
            );
            assert_eq!(info.goarch(), Some("amd64"));
            assert_eq!(
                info.buildmode() == Some("pie"),
                bin.variant.starts_with("pie"),
                "{}",
                bin.path.display()
            );
            assert_eq!(
                info.cgo_enabled(),
                bin.variant == "cgo",
                "{}",
                bin.path.display()
            );
        }
    }
}
