//! The config parser.

use std::path::Path;

use gateway_user::config::Config;

/// The config parser on arbitrary text: it returns a config or a one-line error, and never
/// panics; a config it accepts parses the same way again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let again = Config::parse(text, Path::new("fuzz.toml")).expect("parses twice");
            assert_eq!(config, again);
        }
        Err(err) => assert!(!err.to_string().contains('\n'), "error is one line: {err}"),
    }
}
