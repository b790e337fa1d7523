//! Facts about a Go executable, parsed from its bytes: build info, functions, struct offsets,
//! wait-reason texts, probe attach points. No syscalls here; `remote` finds the bytes.

pub mod buildinfo;
pub mod elf;
#[cfg(test)]
mod fuzz_smoke;
pub mod moduledata;
pub mod offsets;
pub mod pclntab;
pub mod probe_points;
pub mod prologue;
pub mod version;
pub mod waitreasons;

use crate::error::InspectError;
use buildinfo::BuildInfo;
use elf::{ElfImage, ElfSymbol};
use offsets::RuntimeOffsets;
use pclntab::Pclntab;
use version::GoVersion;
use waitreasons::WaitReasons;

/// The one function every Go program has and every park goes through.
const REQUIRED_FUNCTION: &str = "runtime.gopark";

/// Everything parkscope learns from a Go binary before touching the process.
pub struct GoBinary<'data> {
    pub image: ElfImage<'data>,
    pub build: BuildInfo,
    pub version: GoVersion,
    /// `.symtab`, empty in stripped binaries.
    pub symbols: Vec<ElfSymbol>,
    pub pclntab: Pclntab<'data>,
    pub offsets: RuntimeOffsets,
    pub wait_reasons: Option<WaitReasons>,
}

impl<'data> GoBinary<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self, InspectError> {
        let image = ElfImage::parse(data)?;
        let build = buildinfo::read(&image)?;
        let version = check_version(&build)?;
        let pclntab = Pclntab::find(&image)?;
        if pclntab.func_by_name(REQUIRED_FUNCTION).is_none() {
            return Err(InspectError::MissingSymbol(REQUIRED_FUNCTION.into()));
        }
        let symbols = image.symbols();
        let offsets = RuntimeOffsets::resolve(&image, &version)?;
        let wait_reasons = waitreasons::read(&image, &symbols);
        Ok(GoBinary {
            image,
            build,
            version,
            symbols,
            pclntab,
            offsets,
            wait_reasons,
        })
    }

    pub fn is_stripped(&self) -> bool {
        !self.image.has_symtab()
    }

    pub fn symbol(&self, name: &str) -> Option<&ElfSymbol> {
        self.symbols.iter().find(|s| s.name == name)
    }
}

fn check_version(build: &BuildInfo) -> Result<GoVersion, InspectError> {
    let version =
        GoVersion::parse(&build.go_version).ok_or_else(|| InspectError::UnsupportedGoVersion {
            version: build.go_version.clone(),
            why: "the version string is not one parkscope understands".into(),
        })?;
    let (major, minor) = version::OLDEST_SUPPORTED;
    if !version.at_least(major, minor) {
        return Err(InspectError::UnsupportedGoVersion {
            version: version.raw.clone(),
            why: format!(
                "parkscope supports Go {major}.{minor} and newer (the register ABI and runtime \
                 layouts it reads); rebuild the program with a newer Go"
            ),
        });
    }
    match build.goarch() {
        Some("amd64") | None => Ok(version),
        Some(arch) => Err(InspectError::UnsupportedArch(format!(
            "GOARCH={arch}; parkscope supports linux/amd64"
        ))),
    }
}
