//! Fuzzes configuration loading (`tollgate serve` / `tollgate config check`): any text gets a
//! parse error or a list of issues naming their key paths, never a panic.
//!
//! Run: `cargo fuzz run config --sanitizer none` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(cfg) => assert!(cfg.validate().is_empty(), "a loaded config validates"),
        Err(ConfigError::Parse(issue)) => assert!(!issue.path.is_empty()),
        Err(ConfigError::Invalid(issues)) => {
            assert!(!issues.is_empty());
            assert!(issues
                .iter()
                .all(|i| !i.path.is_empty() && !i.message.is_empty()));
        }
    }
});
