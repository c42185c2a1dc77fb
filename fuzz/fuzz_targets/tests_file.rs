//! Any bytes, read as text, through the policy tests file parser
//! (`palisade policy test`): no panic, and every error located.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::testspec::parse_tests;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse_tests("tests.yaml", text) {
        for e in &errors {
            assert!(e.line > 0 && e.column > 0, "unlocated error: {e:?}");
        }
    }
});
