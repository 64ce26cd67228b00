//! The server's configuration parser: any text is a `Config` or a `ConfigError`
//! whose message can be printed; a `Config` renders for `check-config`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_server::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::from_text("fuzz.toml", text) {
        Ok(config) => {
            let _ = config::render(&config);
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
