//! Any bytes as a Kafka request frame through the proxy's reader: no panic,
//! no allocation beyond the input's size, and a denial response can be
//! attempted for whatever it read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::kafka::request::parse_request;
use palisade_proxy::kafka::response::denial;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_request(data) {
        let n: usize = p.topics.iter().map(|t| t.partitions.len() + 1).sum();
        assert!(n <= data.len());
        let _ = denial(&p);
    }
});
