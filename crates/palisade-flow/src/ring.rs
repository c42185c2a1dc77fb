//! The ring of recent flows: bounded, and never silent about what it lost.

use crate::flow::{FlowsResponse, LostEvent};
use std::collections::VecDeque;

/// A bounded ring of flow responses. When full, the oldest flow is
/// overwritten and counted; readers that fall behind see a `LostEvent`.
#[derive(Debug)]
pub struct FlowRing {
    capacity: usize,
    items: VecDeque<(u64, FlowsResponse)>,
    /// Sequence number of the next flow pushed.
    next_seq: u64,
    /// Flows overwritten before anyone could have read them.
    overwritten: u64,
}

impl FlowRing {
    pub fn new(capacity: usize) -> Self {
        FlowRing {
            capacity: capacity.max(1),
            items: VecDeque::with_capacity(capacity.max(1)),
            next_seq: 0,
            overwritten: 0,
        }
    }

    pub fn push(&mut self, f: FlowsResponse) -> u64 {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.overwritten += 1;
        }
        let seq = self.next_seq;
        self.items.push_back((seq, f));
        self.next_seq += 1;
        seq
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last `n` flows.
    pub fn last(&self, n: usize) -> Vec<FlowsResponse> {
        let skip = self.items.len().saturating_sub(n);
        self.items
            .iter()
            .skip(skip)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Everything from sequence `from` on. When the reader fell behind
    /// (its flows were overwritten), a `LostEvent` comes first.
    pub fn since(&self, from: u64) -> (Vec<FlowsResponse>, u64) {
        let mut out = Vec::new();
        let oldest = self.items.front().map_or(self.next_seq, |(s, _)| *s);
        if from < oldest {
            out.push(FlowsResponse {
                lost_events: Some(LostEvent {
                    source: "HUBBLE_RING_BUFFER".into(),
                    num_events_lost: (oldest - from).to_string(),
                    cpu: None,
                }),
                ..Default::default()
            });
        }
        out.extend(
            self.items
                .iter()
                .filter(|(s, _)| *s >= from)
                .map(|(_, f)| f.clone()),
        );
        (out, self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_counted_and_reported() {
        let mut r = FlowRing::new(3);
        for _ in 0..5 {
            r.push(FlowsResponse::default());
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.overwritten(), 2);
        let (items, next) = r.since(0);
        assert_eq!(next, 5);
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[0]
                .lost_events
                .as_ref()
                .map(|l| l.num_events_lost.as_str()),
            Some("2")
        );
    }
}
