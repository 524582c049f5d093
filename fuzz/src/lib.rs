//! The fuzz targets' bodies, one function per target: each `fuzz_targets/<target>.rs` hands
//! libFuzzer's input to its function, and this crate's tests replay every input kept in
//! `regressions/<target>/` (inputs that once crashed it) and `corpus/<target>/` (seeds)
//! through the same function, in an ordinary `cargo test` (run by `cargo xtask test`).

pub mod config;
pub mod control;
pub mod ftp;
pub mod packet;

/// Every target: its name (the directory of its inputs) and its body.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("config", config::config),
    ("control_table", control::control_table),
    ("ftp_lines", ftp::lines),
    ("ftp_session", ftp::session),
    ("ftp_session_policy", ftp::session_policy),
    ("punted_packet", packet::punted_packet),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::TARGETS;

    /// Runs every kept input of every target through it; a panic names the input.
    #[test]
    fn kept_inputs_replay_without_a_crash() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut replayed = 0;
        for (target, body) in TARGETS {
            for kind in ["regressions", "corpus"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
                    continue;
                };
                let mut paths: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
                paths.sort();
                for path in paths {
                    let input = std::fs::read(&path).unwrap();
                    println!("{target}: {}", path.display());
                    body(&input);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs found");
    }
}
