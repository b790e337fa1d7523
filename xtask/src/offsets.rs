//! PLACEHOLDER until the offsets helper lands its generator.
use std::path::PathBuf;
pub struct OffsetsArgs {
    pub releases: Vec<String>,
    pub out: PathBuf,
}
pub fn run(_args: &OffsetsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
