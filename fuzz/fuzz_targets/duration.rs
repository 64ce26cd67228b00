//! `tollgate::parse_duration`: any text is a duration or an error; a duration the
//! server prints (`format_duration`) reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::parse_duration;
use tollgate_server::config::format_duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_duration(text) {
        Ok(d) => {
            let printed = format_duration(d.as_u64());
            let again = parse_duration(&printed);
            assert_eq!(again.ok(), Some(d), "{text:?} -> {printed:?}");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
