//! Builds the BPF programs (gateway-ebpf) for the bpf target with the nightly toolchain and
//! bpf-linker, into OUT_DIR, so the agent can embed the object. `cargo xtask setup` installs
//! what this needs on a fresh machine.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "gateway-ebpf")
        .ok_or_else(|| anyhow!("gateway-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("gateway-ebpf's manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the BPF programs failed; `cargo xtask setup` installs the nightly rust-src \
         component and bpf-linker they need",
    )
}
