//! The server's configuration parser: any text is a `Config` or a `ConfigError`
//! whose message can be printed. A `Config`'s rendering (what `check-config`
//! prints) is itself a valid configuration that renders the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_server::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::from_text("fuzz.toml", text) {
        Ok(parsed) => {
            let rendered = config::render(&parsed);
            match config::from_text("rendered.toml", &rendered) {
                Ok(again) => assert_eq!(
                    config::render(&again),
                    rendered,
                    "the rendering of {text:?} renders differently"
                ),
                Err(err) => panic!("the rendering of {text:?} is invalid: {err}\n{rendered}"),
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
