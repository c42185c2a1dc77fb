//! The service map: workloads as nodes, observed connections as edges
//! coloured by verdict, and a filterable flow table, as one self-contained
//! HTML page (no external assets: it works on an air-gapped machine).

use crate::flow::{Endpoint, Flow, FlowsResponse, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;

/// A workload on the map.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct MapNode {
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// `pod`, `world`, `host`, `remote-node`, `ip`.
    pub kind: String,
}

/// An observed connection between two workloads on one port.
#[derive(Clone, Debug, Serialize)]
pub struct MapEdge {
    pub source: String,
    pub destination: String,
    pub port: String,
    pub forwarded: u64,
    pub dropped: u64,
    pub audit: u64,
    /// The rules seen deciding this edge.
    pub rules: Vec<String>,
}

impl MapEdge {
    /// `forwarded`, `dropped` or `mixed`.
    pub fn verdict(&self) -> &'static str {
        match (self.forwarded + self.audit > 0, self.dropped > 0) {
            (true, true) => "mixed",
            (false, true) => "dropped",
            _ if self.audit > 0 => "audit",
            _ => "forwarded",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceMap {
    pub nodes: Vec<MapNode>,
    pub edges: Vec<MapEdge>,
}

fn workload(e: Option<&Endpoint>, ip: &str) -> MapNode {
    match e {
        Some(e) if !e.pod_name.is_empty() => {
            // Group pods of one app: the `app` label, else the pod name.
            let app = e
                .labels
                .iter()
                .find_map(|l| {
                    l.strip_prefix("k8s:app=")
                        .or_else(|| l.strip_prefix("k8s:app.kubernetes.io/name="))
                })
                .unwrap_or(&e.pod_name);
            MapNode {
                id: format!("{}/{}", e.namespace, app),
                namespace: e.namespace.clone(),
                name: app.to_string(),
                kind: "pod".into(),
            }
        }
        Some(e) if e.labels.iter().any(|l| l.starts_with("reserved:world")) => MapNode {
            id: "world".into(),
            namespace: String::new(),
            name: "world".into(),
            kind: "world".into(),
        },
        Some(e) if e.labels.iter().any(|l| l == "reserved:host") => MapNode {
            id: "host".into(),
            namespace: String::new(),
            name: "host".into(),
            kind: "host".into(),
        },
        Some(e) if e.labels.iter().any(|l| l == "reserved:remote-node") => MapNode {
            id: "remote-node".into(),
            namespace: String::new(),
            name: "remote-node".into(),
            kind: "remote-node".into(),
        },
        _ => MapNode {
            id: format!("ip:{ip}"),
            namespace: String::new(),
            name: ip.to_string(),
            kind: "ip".into(),
        },
    }
}

/// Builds the map from flows (replies are left out: an edge is a
/// connection in the direction that opened it).
pub fn build(flows: &[FlowsResponse]) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, String), MapEdge> = BTreeMap::new();
    for f in flows.iter().filter_map(|r| r.flow.as_ref()) {
        if f.is_reply == Some(true) {
            continue;
        }
        let ip = f.ip.clone().unwrap_or_default();
        let src = workload(f.source.as_ref(), &ip.source);
        let dst = workload(f.destination.as_ref(), &ip.destination);
        let (proto, _, dport) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
        let port = if proto.starts_with("ICMP") {
            proto.to_string()
        } else {
            format!("{dport}/{proto}")
        };
        let e = edges
            .entry((src.id.clone(), dst.id.clone(), port.clone()))
            .or_insert_with(|| MapEdge {
                source: src.id.clone(),
                destination: dst.id.clone(),
                port,
                forwarded: 0,
                dropped: 0,
                audit: 0,
                rules: vec![],
            });
        match f.verdict {
            Verdict::Dropped => e.dropped += 1,
            Verdict::Audit => e.audit += 1,
            _ => e.forwarded += 1,
        }
        for x in &f.extensions {
            for r in &x.rules {
                if !e.rules.contains(r) && e.rules.len() < 8 {
                    e.rules.push(r.clone());
                }
            }
        }
        nodes.insert(src.id.clone(), src);
        nodes.insert(dst.id.clone(), dst);
    }
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges: edges.into_values().collect(),
    }
}

#[derive(Serialize)]
struct Row<'a> {
    time: &'a str,
    source: String,
    destination: String,
    port: String,
    verdict: &'a str,
    summary: String,
    rule: String,
}

fn row(f: &Flow) -> Row<'_> {
    let ip = f.ip.clone().unwrap_or_default();
    let name = |e: Option<&Endpoint>, ip: &str| match e {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.to_string(),
    };
    let (proto, _, dport) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
    Row {
        time: &f.time,
        source: name(f.source.as_ref(), &ip.source),
        destination: name(f.destination.as_ref(), &ip.destination),
        port: format!("{dport}/{proto}"),
        verdict: f.verdict.as_str(),
        summary: f.drop_reason_desc.clone(),
        rule: f
            .extensions
            .first()
            .map(|x| x.rules.join("; "))
            .unwrap_or_default(),
    }
}

/// The page, with the map and the flows embedded as JSON.
pub fn render_page(title: &str, flows: &[FlowsResponse]) -> String {
    let map = build(flows);
    let rows: Vec<Row> = flows
        .iter()
        .filter_map(|r| r.flow.as_ref())
        .map(row)
        .collect();
    let data = serde_json::json!({ "map": map, "rows": rows });
    // `</` must not close the script element early.
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    PAGE.replace("{{TITLE}}", &html_escape(title))
        .replace("{{DATA}}", &json)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{padding:12px 20px;background:#1d2330;color:#fff;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0} header span{opacity:.7;font-size:13px}
#map{background:#fff;margin:12px 20px;border:1px solid #dde1e7;border-radius:6px}
.legend{margin:0 20px;font-size:13px} .legend b{display:inline-block;width:22px;height:4px;vertical-align:middle;margin:0 4px 0 14px}
table{border-collapse:collapse;margin:12px 20px;width:calc(100% - 40px);background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e5e8ed;padding:5px 8px;text-align:left} th{background:#eef0f4}
input{margin:12px 20px 0;padding:6px 8px;width:360px;font-size:14px}
.DROPPED{color:#c62828;font-weight:600} .FORWARDED{color:#2e7d32} .AUDIT{color:#ef6c00} .REDIRECTED{color:#1565c0}
svg text{font-size:12px} .node rect{fill:#fff;stroke:#5c6bc0;stroke-width:1.5} .node.world rect{stroke:#8d6e63} .node.host rect{stroke:#546e7a}
</style></head><body>
<header><h1>{{TITLE}}</h1><span id="stats"></span></header>
<div class="legend">edges:<b style="background:#2e7d32"></b>forwarded<b style="background:#c62828"></b>dropped<b style="background:#ef6c00"></b>audit<b style="background:#8e24aa"></b>mixed</div>
<svg id="map" width="1100" height="520" role="img" aria-label="service map"></svg>
<input id="filter" placeholder="filter flows: pod, port, verdict, rule…" aria-label="filter flows">
<table id="flows"><thead><tr><th>time</th><th>source</th><th>destination</th><th>port</th><th>verdict</th><th>reason</th><th>rule</th></tr></thead><tbody></tbody></table>
<script id="data" type="application/json">{{DATA}}</script>
<script>
const D=JSON.parse(document.getElementById('data').textContent);
const svg=document.getElementById('map'),NS='http://www.w3.org/2000/svg';
const W=1100,H=520,cx=W/2,cy=H/2,R=Math.min(W,H)/2-70;
const nodes=D.map.nodes,pos={};
nodes.forEach((n,i)=>{const a=2*Math.PI*i/Math.max(nodes.length,1)-Math.PI/2;pos[n.id]=[cx+R*1.6*Math.cos(a),cy+R*Math.sin(a)];});
const col={forwarded:'#2e7d32',dropped:'#c62828',audit:'#ef6c00',mixed:'#8e24aa'};
function el(t,a,p){const e=document.createElementNS(NS,t);for(const k in a)e.setAttribute(k,a[k]);(p||svg).appendChild(e);return e;}
const defs=el('defs',{});Object.entries(col).forEach(([k,c])=>{const m=el('marker',{id:'m-'+k,viewBox:'0 0 10 10',refX:'10',refY:'5',markerWidth:'7',markerHeight:'7',orient:'auto-start-reverse'},defs);el('path',{d:'M0,0L10,5L0,10z',fill:c},m);});
D.map.edges.forEach(e=>{const v=e.forwarded+e.audit>0&&e.dropped>0?'mixed':e.dropped>0?'dropped':e.audit>0?'audit':'forwarded';
 const [x1,y1]=pos[e.source],[x2,y2]=pos[e.destination];const dx=x2-x1,dy=y2-y1,l=Math.hypot(dx,dy)||1;
 const g=el('g',{class:'edge '+v});el('line',{x1:x1+dx/l*60,y1:y1+dy/l*22,x2:x2-dx/l*60,y2:y2-dy/l*22,stroke:col[v],'stroke-width':2.5,'marker-end':'url(#m-'+v+')'},g);
 const t=el('text',{x:(x1+x2)/2,y:(y1+y2)/2-4,'text-anchor':'middle',fill:col[v]},g);t.textContent=e.port+' ('+(e.forwarded+e.audit)+'✓ '+e.dropped+'✗)';
 const ti=el('title',{},g);ti.textContent=e.source+' → '+e.destination+' '+e.port+'\n'+e.rules.join('\n');});
nodes.forEach(n=>{const [x,y]=pos[n.id];const g=el('g',{class:'node '+n.kind});el('rect',{x:x-60,y:y-18,width:120,height:36,rx:6},g);
 const t=el('text',{x:x,y:y+(n.namespace?-2:4),'text-anchor':'middle'},g);t.textContent=n.name;
 if(n.namespace){const s=el('text',{x:x,y:y+12,'text-anchor':'middle',fill:'#78839a'},g);s.textContent=n.namespace;}});
const tb=document.querySelector('#flows tbody');
function draw(q){tb.innerHTML='';let k=0;for(const r of D.rows){const s=[r.time,r.source,r.destination,r.port,r.verdict,r.summary,r.rule].join(' ');
 if(q&&!s.toLowerCase().includes(q.toLowerCase()))continue;k++;const tr=document.createElement('tr');
 [r.time,r.source,r.destination,r.port,r.verdict,r.summary,r.rule].forEach((v,i)=>{const td=document.createElement('td');td.textContent=v;if(i==4)td.className=v;tr.appendChild(td);});tb.appendChild(tr);}
 document.getElementById('stats').textContent=nodes.length+' workloads, '+D.map.edges.length+' connections, '+k+' of '+D.rows.length+' flows shown';}
document.getElementById('filter').addEventListener('input',e=>draw(e.target.value));draw('');
</script></body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::*;

    #[test]
    fn edges_carry_verdicts_and_the_page_embeds_them() {
        let mk = |v: Verdict, port: u32| FlowsResponse {
            flow: Some(Flow {
                verdict: v,
                ip: Some(Ip {
                    source: "10.0.0.1".into(),
                    destination: "10.0.0.2".into(),
                    ip_version: "IPv4".into(),
                }),
                l4: Some(Layer4 {
                    tcp: Some(Ports {
                        source_port: 1,
                        destination_port: port,
                        flags: None,
                    }),
                    ..Default::default()
                }),
                source: Some(Endpoint {
                    namespace: "default".into(),
                    pod_name: "frontend-1".into(),
                    labels: vec!["k8s:app=frontend".into()],
                    ..Default::default()
                }),
                destination: Some(Endpoint {
                    namespace: "default".into(),
                    pod_name: "backend-1".into(),
                    labels: vec!["k8s:app=backend".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let flows = vec![
            mk(Verdict::Forwarded, 80),
            mk(Verdict::Dropped, 80),
            mk(Verdict::Dropped, 22),
        ];
        let m = build(&flows);
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.edges.len(), 2);
        let e80 = m.edges.iter().find(|e| e.port == "80/TCP").expect("edge");
        assert_eq!(e80.verdict(), "mixed");
        let page = render_page("Palisade </script>", &flows);
        assert!(page.contains("default/frontend"));
        assert!(!page.contains("Palisade </script>"));
    }
}
