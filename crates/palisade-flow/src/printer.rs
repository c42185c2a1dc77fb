//! Output formats of `palisade observe`: compact, json (the Flow alone),
//! jsonpb (one GetFlowsResponse per line) and table.

use crate::flow::{Flow, FlowsResponse};
use crate::record::summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Compact,
    Json,
    Jsonpb,
    Table,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "compact" => Format::Compact,
            "json" => Format::Json,
            "jsonpb" => Format::Jsonpb,
            "table" => Format::Table,
            _ => return None,
        })
    }
}

pub const TABLE_HEADER: &str = "TIMESTAMP                       SOURCE -> DESTINATION                         VERDICT     SUMMARY / RULE";

fn rule_of(f: &Flow) -> String {
    f.extensions
        .first()
        .map(|e| e.rules.join("; "))
        .unwrap_or_default()
}

/// One response as a line of the chosen format.
pub fn render(r: &FlowsResponse, format: Format) -> String {
    if let Some(l) = &r.lost_events {
        return match format {
            Format::Jsonpb | Format::Json => serde_json::to_string(r).unwrap_or_default(),
            _ => format!("EVENTS LOST: {} {}", l.source, l.num_events_lost),
        };
    }
    let Some(f) = &r.flow else {
        return String::new();
    };
    match format {
        Format::Jsonpb => serde_json::to_string(r).unwrap_or_default(),
        Format::Json => serde_json::to_string(f).unwrap_or_default(),
        Format::Compact => {
            let s = if f.summary.is_empty() {
                summary(f)
            } else {
                f.summary.clone()
            };
            let rule = rule_of(f);
            if rule.is_empty() {
                format!("{} {s}", f.time)
            } else {
                format!("{} {s} [{rule}]", f.time)
            }
        }
        Format::Table => {
            let s = if f.summary.is_empty() {
                summary(f)
            } else {
                f.summary.clone()
            };
            let (flow, _) = s
                .split_once(" to-endpoint")
                .or_else(|| s.split_once(" from-endpoint"))
                .unwrap_or((&s, ""));
            format!(
                "{:<31} {:<45} {:<11} {}",
                f.time,
                flow,
                f.verdict.as_str(),
                rule_of(f)
            )
        }
    }
}
