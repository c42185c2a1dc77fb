//! Any bytes through the DNS proxy's parser: no panic, answers learned only
//! from records the message holds, and every error answer the proxy would
//! send parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::dns::wire::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let q = m.qname().unwrap_or(".").to_string();
        let a = wire::answer_ips(&m, &q);
        assert!(a.ips.len() <= m.answers.len());
    }
    for rcode in [wire::RCODE_REFUSED, wire::RCODE_NXDOMAIN] {
        let e = wire::error_answer(data, rcode);
        if !e.is_empty() {
            assert!(Message::parse(&e).is_ok(), "unparseable error answer");
        }
    }
});
