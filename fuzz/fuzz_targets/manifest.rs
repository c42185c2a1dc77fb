//! Any bytes, read as text, through the manifest parser and validator with
//! both option sets: no panic, and every error located.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::manifest::{Object, Options, parse_file, to_yaml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let all_on = Options {
        enable_node_selector_labels: true,
        enable_extended_ip_protocols: true,
    };
    for opts in [Options::default(), all_on] {
        for doc in parse_file("fuzz.yaml", text, &opts) {
            for e in &doc.errors {
                assert!(e.line > 0 && e.column > 0, "unlocated error: {e:?}");
                let _ = e.to_string();
            }
            assert!(
                doc.errors.is_empty() || doc.object.is_none(),
                "a document with errors decoded anyway"
            );
            // What `policy get` does with a decoded policy.
            if let Some(Object::Policy(p)) = &doc.object
                && let Ok(v) = serde_json::to_value(p)
            {
                let _ = to_yaml(&v);
            }
        }
    }
});
