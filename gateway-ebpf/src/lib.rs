#![no_std]
// The programs live in the `gateway-fastpath` binary target (src/main.rs). This library exists
// only so the agent's build script can depend on the crate; see Cargo.toml.
