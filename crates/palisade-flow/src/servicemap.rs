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

/// The flows seen on one port of an edge, by verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PortStats {
    /// `80/TCP`, `53/UDP`, `ICMPv4`.
    pub port: String,
    pub forwarded: u64,
    pub dropped: u64,
    pub audit: u64,
    /// ERROR: the proxy could not complete the request (upstream
    /// unreachable, malformed request): neither passed nor a policy drop.
    pub error: u64,
    /// The rules seen deciding flows on this port (at most 8).
    pub rules: Vec<String>,
}

/// The verdicts with flows, in the map's order: `forwarded`, `dropped`,
/// `audit`, `error`. AUDIT (would be dropped, allowed by audit mode) stays
/// apart from FORWARDED so that an audited connection is never hidden, and
/// ERROR so that a failing upstream never looks like a working one.
fn verdicts_of(forwarded: u64, dropped: u64, audit: u64, error: u64) -> Vec<&'static str> {
    [
        ("forwarded", forwarded),
        ("dropped", dropped),
        ("audit", audit),
        ("error", error),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(v, _)| v)
    .collect()
}

impl PortStats {
    /// The verdicts seen on this port (`forwarded`, `dropped`, `audit`,
    /// `error`).
    pub fn verdicts(&self) -> Vec<&'static str> {
        verdicts_of(self.forwarded, self.dropped, self.audit, self.error)
    }
}

/// The observed connections from one workload to another: one edge per
/// (source, destination), with every port it was seen on. The opposite
/// direction is an edge of its own.
#[derive(Clone, Debug, Serialize)]
pub struct MapEdge {
    pub source: String,
    pub destination: String,
    /// By port number, then protocol; ICMP last.
    pub ports: Vec<PortStats>,
}

impl MapEdge {
    pub fn forwarded(&self) -> u64 {
        self.ports.iter().map(|p| p.forwarded).sum()
    }
    pub fn dropped(&self) -> u64 {
        self.ports.iter().map(|p| p.dropped).sum()
    }
    pub fn audit(&self) -> u64 {
        self.ports.iter().map(|p| p.audit).sum()
    }
    pub fn error(&self) -> u64 {
        self.ports.iter().map(|p| p.error).sum()
    }
    /// Every verdict seen on any port of the edge (`forwarded`, `dropped`,
    /// `audit`, `error`, in that order): the page draws one lane per verdict.
    pub fn verdicts(&self) -> Vec<&'static str> {
        verdicts_of(self.forwarded(), self.dropped(), self.audit(), self.error())
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

/// The port an edge groups a flow under: `80/TCP`, or the ICMP version.
fn port_key(f: &Flow) -> String {
    let (proto, _, dport) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
    if proto.starts_with("ICMP") {
        proto.to_string()
    } else {
        format!("{dport}/{proto}")
    }
}

/// Sort key of a port key: numbered ports by number, then the rest.
fn port_order(p: &str) -> (u32, String) {
    let n = p
        .split_once('/')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(u32::MAX);
    (n, p.to_string())
}

/// Builds the map from flows (replies are left out: an edge is a
/// connection in the direction that opened it).
pub fn build(flows: &[FlowsResponse]) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    type Ports = BTreeMap<(u32, String), PortStats>;
    let mut edges: BTreeMap<(String, String), Ports> = BTreeMap::new();
    for f in flows.iter().filter_map(|r| r.flow.as_ref()) {
        if f.is_reply == Some(true) {
            continue;
        }
        let ip = f.ip.clone().unwrap_or_default();
        let src = workload(f.source.as_ref(), &ip.source);
        let dst = workload(f.destination.as_ref(), &ip.destination);
        let port = port_key(f);
        let p = edges
            .entry((src.id.clone(), dst.id.clone()))
            .or_default()
            .entry(port_order(&port))
            .or_insert_with(|| PortStats {
                port,
                ..Default::default()
            });
        match f.verdict {
            Verdict::Dropped => p.dropped += 1,
            Verdict::Audit => p.audit += 1,
            Verdict::Error => p.error += 1,
            // FORWARDED, REDIRECTED (to the L7 proxy, whose own flow
            // follows), TRACED, TRANSLATED: the traffic went on.
            _ => p.forwarded += 1,
        }
        for x in &f.extensions {
            for r in &x.rules {
                if !p.rules.contains(r) && p.rules.len() < 8 {
                    p.rules.push(r.clone());
                }
            }
        }
        nodes.insert(src.id.clone(), src);
        nodes.insert(dst.id.clone(), dst);
    }
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((source, destination), ports)| MapEdge {
                source,
                destination,
                ports: ports.into_values().collect(),
            })
            .collect(),
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
    /// The map's workloads and port key, so that a click on an edge can
    /// show its flows.
    src: String,
    dst: String,
    key: String,
    reply: bool,
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
        src: workload(f.source.as_ref(), &ip.source).id,
        dst: workload(f.destination.as_ref(), &ip.destination).id,
        key: port_key(f),
        reply: f.is_reply == Some(true),
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
#map{background:#fff;margin:12px 20px;border:1px solid #dde1e7;border-radius:6px;display:block}
.legend{margin:8px 20px 0;font-size:13px} .legend b{display:inline-block;width:22px;height:4px;vertical-align:middle;margin:0 4px 0 14px} .legend.hint{color:#5f6b7e;font-size:12px;margin-top:4px}
table{border-collapse:collapse;margin:12px 20px;width:calc(100% - 40px);background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e5e8ed;padding:5px 8px;text-align:left} th{background:#eef0f4}
input{margin:12px 20px 0;padding:6px 8px;width:360px;font-size:14px}
.DROPPED{color:#c62828;font-weight:600} .FORWARDED{color:#2e7d32} .AUDIT{color:#ef6c00} .ERROR{color:#6a1b9a;font-weight:600} .REDIRECTED{color:#1565c0}
svg text{font-size:12px} .node rect{fill:#fff;stroke:#5c6bc0;stroke-width:1.5} .node.world rect{stroke:#8d6e63} .node.host rect{stroke:#546e7a}
.edge{cursor:pointer} .edge path.lane{fill:none;stroke-width:3;stroke-linecap:butt} .edge path.hit{fill:none;stroke:transparent;stroke-width:14}
.edge:hover path.lane,.edge.selected path.lane{stroke-width:4.5} svg.selecting .edge:not(.selected),svg.selecting .edge-label:not(.selected){opacity:.3}
.edge-label{cursor:pointer} .edge-label rect{fill:#fff;fill-opacity:.93;stroke:#c9ced8} .edge-label.selected rect{stroke:#1d2330;stroke-width:1.5}
.edge-label text{fill:#1d2330} .edge-label .n{font-weight:600}
#detail{margin:12px 20px 0;padding:10px 12px;background:#fff;border:1px solid #dde1e7;border-radius:6px;font-size:14px}
#detail table{margin:8px 0 0;width:100%} #detail button{margin-left:12px}
</style></head><body>
<header><h1>{{TITLE}}</h1><span id="stats"></span></header>
<div class="legend">edges:<b style="background:#2e7d32"></b>forwarded (✓)<b style="background:#c62828"></b>dropped (✗)<b style="background:#ef6c00"></b>audit (would be dropped; allowed by audit mode)<b style="background:#6a1b9a"></b>error (the proxy could not complete it)</div>
<div class="legend hint">one edge per source → destination, labelled with its ports; an edge seen with several verdicts has one lane per verdict; opposite directions are separate arcs; click an edge for its ports and flows</div>
<svg id="map" width="1100" height="520" role="img" aria-label="service map"></svg>
<div id="detail" hidden><b id="detail-title"></b><button id="detail-clear" type="button">show all flows</button>
<table id="edge-ports"><thead><tr><th>port</th><th>forwarded</th><th>dropped</th><th>audit</th><th>error</th><th>rules</th></tr></thead><tbody></tbody></table></div>
<input id="filter" placeholder="filter flows: pod, port, verdict, rule…" aria-label="filter flows">
<table id="flows"><thead><tr><th>time</th><th>source</th><th>destination</th><th>port</th><th>verdict</th><th>reason</th><th>rule</th></tr></thead><tbody></tbody></table>
<script id="data" type="application/json">{{DATA}}</script>
<script>
const D=JSON.parse(document.getElementById('data').textContent);
const svg=document.getElementById('map'),NS='http://www.w3.org/2000/svg';
const nodes=D.map.nodes,edges=D.map.edges,N=nodes.length;
const VS=['forwarded','dropped','audit','error'],col={forwarded:'#2e7d32',dropped:'#c62828',audit:'#ef6c00',error:'#6a1b9a'};
const SYM={forwarded:'✓',dropped:'✗',audit:' audit',error:' error'};
function el(t,a,p){const e=document.createElementNS(NS,t);for(const k in a)e.setAttribute(k,a[k]);(p||svg).appendChild(e);return e;}
const W=1100,H=Math.max(520,Math.min(1100,300+N*26));
svg.setAttribute('height',H);svg.setAttribute('viewBox','0 0 '+W+' '+H);
const cx=W/2,cy=H/2,RX=W/2-110,RY=H/2-50;
edges.forEach(e=>{e.key=e.source+'\u2192'+e.destination;VS.forEach(v=>e[v]=e.ports.reduce((s,p)=>s+p[v],0));e.verdicts=VS.filter(v=>e[v]>0);});
const byKey={};edges.forEach(e=>byKey[e.key]=e);
// Workloads sit on an ellipse; the order cuts crossing edges (pairwise swaps while they help).
const idx={};nodes.forEach((n,i)=>idx[n.id]=i);
const und=[...new Set(edges.filter(e=>e.source!==e.destination).map(e=>{const a=idx[e.source],b=idx[e.destination];return a<b?a+' '+b:b+' '+a;}))].map(s=>s.split(' ').map(Number));
const slot=nodes.map((_,i)=>i);
function cost(){let c=0;for(let i=0;i<und.length;i++){let a=slot[und[i][0]],b=slot[und[i][1]];if(a>b)[a,b]=[b,a];c+=Math.min(b-a,N-b+a);
 for(let j=i+1;j<und.length;j++){const p=slot[und[j][0]],q=slot[und[j][1]];if(p==a||p==b||q==a||q==b)continue;if((p>a&&p<b)!=(q>a&&q<b))c+=N;}}return c;}
if(N>3&&N*N*und.length*und.length<4e7){let best=cost();for(let pass=0,better=true;better&&pass<20;pass++){better=false;
 for(let i=0;i<N;i++)for(let j=i+1;j<N;j++){[slot[i],slot[j]]=[slot[j],slot[i]];const c=cost();if(c<best){best=c;better=true;}else[slot[i],slot[j]]=[slot[j],slot[i]];}}}
const pos={},half={};
nodes.forEach((n,i)=>{const a=2*Math.PI*slot[i]/Math.max(N,1)-Math.PI/2;pos[n.id]=N==1?[cx,cy]:[cx+RX*Math.cos(a),cy+RY*Math.sin(a)];});
const gE=el('g',{id:'edges'}),gN=el('g',{id:'nodes'}),gL=el('g',{id:'labels'});
// Nodes first (their sizes bound the edges).
nodes.forEach(n=>{const [x,y]=pos[n.id];const g=el('g',{class:'node '+n.kind},gN);const r=el('rect',{},g);
 const t=el('text',{x:x,y:y+(n.namespace?-2:4),'text-anchor':'middle'},g);t.textContent=n.name;let w=t.getComputedTextLength();
 if(n.namespace){const s=el('text',{x:x,y:y+12,'text-anchor':'middle',fill:'#78839a'},g);s.textContent=n.namespace;w=Math.max(w,s.getComputedTextLength());}
 const hw=Math.max(60,w/2+10);half[n.id]=hw;Object.entries({x:x-hw,y:y-18,width:2*hw,height:36,rx:6}).forEach(([k,v])=>r.setAttribute(k,v));});
const boxOf=(id,m)=>{const [x,y]=pos[id];return [x-half[id]-m,y-18-m,x+half[id]+m,y+18+m];};
const inside=(p,b)=>p[0]>b[0]&&p[0]<b[2]&&p[1]>b[1]&&p[1]<b[3];
// Cubic Bézier helpers.
const lerp=(a,b,t)=>[a[0]+(b[0]-a[0])*t,a[1]+(b[1]-a[1])*t];
function at(P,t){const u=1-t;return [u*u*u*P[0][0]+3*u*u*t*P[1][0]+3*u*t*t*P[2][0]+t*t*t*P[3][0],u*u*u*P[0][1]+3*u*u*t*P[1][1]+3*u*t*t*P[2][1]+t*t*t*P[3][1]];}
function tangent(P,t){const u=1-t,d=[0,1].map(k=>3*u*u*(P[1][k]-P[0][k])+6*u*t*(P[2][k]-P[1][k])+3*t*t*(P[3][k]-P[2][k]));const l=Math.hypot(d[0],d[1])||1;return [d[0]/l,d[1]/l,l];}
function split(P,t){const a=lerp(P[0],P[1],t),b=lerp(P[1],P[2],t),c=lerp(P[2],P[3],t),d=lerp(a,b,t),e=lerp(b,c,t),f=lerp(d,e,t);return [[P[0],a,d,f],[f,e,c,P[3]]];}
function part(P,t0,t1){const r=split(P,t1)[0];return split(r,t0/t1)[1];}
const f1=v=>Math.round(v*10)/10,dOf=P=>'M'+f1(P[0][0])+' '+f1(P[0][1])+'C'+P.slice(1).map(p=>f1(p[0])+' '+f1(p[1])).join(' ');
// Where the curve leaves its source's box and enters its destination's.
function clip(P,b0,b1){const edge=(b,t,d)=>{for(;t>=0&&t<=1;t+=d)if(!inside(at(P,t),b)){let i=t-d,o=t;for(let k=0;k<12;k++){const m=(i+o)/2;if(inside(at(P,m),b))i=m;else o=m;}return o;}return null;};
 const t0=edge(b0,0,0.005),t1=edge(b1,1,-0.005);return t0===null||t1===null||t1<=t0+0.02?[0,1]:[t0,t1];}
function curve(e,bend){const [x1,y1]=pos[e.source],[x2,y2]=pos[e.destination];
 if(e.source==e.destination){const hw=half[e.source],s=bend;return [[x1+hw-10,y1-18],[x1+hw+30+s,y1-70-s],[x1+hw+70+s,y1+10],[x1+hw,y1+8]];}
 const dx=x2-x1,dy=y2-y1,l=Math.hypot(dx,dy)||1,nx=dy/l,ny=-dx/l,q=[(x1+x2)/2+nx*bend,(y1+y2)/2+ny*bend];
 return [[x1,y1],lerp([x1,y1],q,2/3),lerp([x2,y2],q,2/3),[x2,y2]];}
function shift(P,o){const dx=P[3][0]-P[0][0],dy=P[3][1]-P[0][1],l=Math.hypot(dx,dy);const n=l<1?[1,0]:[dy/l,-dx/l];return P.map(p=>[p[0]+n[0]*o,p[1]+n[1]*o]);}
// An edge bends away from workloads it would cross; opposite directions bend to opposite sides.
const geo={};
edges.forEach(e=>{const b0=boxOf(e.source,4),b1=boxOf(e.destination,4),rev=byKey[e.destination+'\u2192'+e.source]&&e.source!=e.destination;
 const others=nodes.filter(n=>n.id!=e.source&&n.id!=e.destination).map(n=>boxOf(n.id,8));
 const l=Math.hypot(pos[e.destination][0]-pos[e.source][0],pos[e.destination][1]-pos[e.source][1]),b=Math.max(36,Math.min(70,l*0.12));
 const tries=e.source==e.destination?[0]:rev?[b,b+30,b+60,b+100]:[0,35,-35,70,-70,110,-110];let best=null;
 for(const bend of tries){const P=rev?shift(curve(e,bend),9):curve(e,bend),[t0,t1]=clip(P,b0,b1);let hits=0;for(let t=t0;t<=t1;t+=0.02)if(others.some(b=>inside(at(P,t),b)))hits++;
  if(!best||hits<best.hits)best={P,t0,t1,hits,bend};if(!hits)break;}
 geo[e.key]=best;});
const samples=edges.map(e=>{const g=geo[e.key],s=[];for(let i=0;i<=24;i++)s.push(at(g.P,g.t0+(g.t1-g.t0)*i/24));return [e.key,s];});
let sel=null;
edges.forEach(e=>{const {P,t0,t1}=geo[e.key],n=e.verdicts.length,one=n==1?e.verdicts[0]:null;
 const g=el('g',{class:'edge '+e.verdicts.join(' '),'data-source':e.source,'data-destination':e.destination,'data-ports':e.ports.map(p=>p.port).join(' '),tabindex:'0'},gE);
 const ti=el('title',{},g);ti.textContent=e.source+' → '+e.destination+'\n'+e.ports.map(p=>p.port+': '+VS.filter(v=>p[v]>0).map(v=>p[v]+' '+v).join(', ')+p.rules.map(r=>'\n  '+r).join('')).join('\n');
 el('path',{class:'hit',d:dOf(part(P,t0,t1))},g);
 const [ux,uy,sp]=tangent(P,t1),tip=at(P,t1),AL=11,AW=Math.max(5,n*2.5+2.5),tb=Math.max(t0+0.01,t1-AL/sp);
 e.verdicts.forEach((v,i)=>{const Q=shift(P,(i-(n-1)/2)*3.5);el('path',{class:'lane '+v,d:dOf(part(Q,t0,tb)),stroke:col[v]},g);});
 el('path',{class:'arrow',d:'M'+f1(tip[0])+' '+f1(tip[1])+'L'+f1(tip[0]-ux*AL-uy*AW)+' '+f1(tip[1]-uy*AL+ux*AW)+'L'+f1(tip[0]-ux*AL+uy*AW)+' '+f1(tip[1]-uy*AL-ux*AW)+'z',fill:one?col[one]:'#37474f'},g);
 e.g=g;g.addEventListener('click',()=>pick(e));g.addEventListener('keydown',k=>{if(k.key=='Enter')pick(e);});});
// Labels: on top, each at the first place along its curve that overlaps no workload and no other label.
const placed=[],MAXL=5;
const over=(a,b)=>a[0]<b[2]&&b[0]<a[2]&&a[1]<b[3]&&b[1]<a[3];
const area=(a,b)=>over(a,b)?(Math.min(a[2],b[2])-Math.max(a[0],b[0]))*(Math.min(a[3],b[3])-Math.max(a[1],b[1])):0;
const nodeBoxes=nodes.map(n=>boxOf(n.id,3));
edges.slice().sort((a,b)=>b.ports.length-a.ports.length||(a.key<b.key?-1:1)).forEach(e=>{const {P,t0,t1}=geo[e.key];
 const g=el('g',{class:'edge-label '+e.verdicts.join(' '),'data-source':e.source,'data-destination':e.destination},gL);
 const ti=el('title',{},g);ti.textContent=e.source+' → '+e.destination;
 const r=el('rect',{class:'label-bg',rx:3},g),t=el('text',{'text-anchor':'middle'},g);
 const shown=e.ports.length>MAXL?e.ports.slice(0,MAXL-1):e.ports;
 shown.forEach((p,i)=>{const s=el('tspan',{class:'port '+VS.filter(v=>p[v]>0).join(' '),'data-port':p.port,'data-forwarded':p.forwarded,'data-dropped':p.dropped,'data-audit':p.audit,'data-error':p.error,x:0,dy:i?'1.25em':'0'},t);
  s.appendChild(document.createTextNode(p.port));VS.filter(v=>p[v]>0).forEach(v=>{s.appendChild(document.createTextNode(' '));const c=el('tspan',{class:'n '+v,fill:col[v]},s);c.textContent=p[v]+SYM[v];});});
 if(shown.length<e.ports.length){const s=el('tspan',{class:'more',x:0,dy:'1.25em',fill:'#5f6b7e'},t);s.textContent='+'+(e.ports.length-shown.length)+' more ports (click)';}
 const bb=t.getBBox(),w=bb.width+10,h=bb.height+4;
 const dt=t1-t0,mid=at(P,t0+dt/2);
 const hardOf=b=>placed.reduce((s,q)=>s+area(b,q),0)+nodeBoxes.reduce((s,q)=>s+area(b,q),0)+(b[0]<2||b[1]<2||b[2]>W-2||b[3]>H-2?1e6:0);
 let best=null;
 const tryAt=(x,y,pen)=>{const b=[x-w/2,y-h/2,x+w/2,y+h/2],hard=hardOf(b);if(best&&hard*1000>best.sc)return;
  let soft=pen;for(const [k,s] of samples)if(k!=e.key)for(const p of s)if(inside(p,b))soft+=1;
  const sc=hard*1000+soft;if(!best||sc<best.sc)best={sc,b,x,y,hard};};
 // On the curve or just beside it; then further along and further out.
 const along=(fs,os)=>{for(const f of fs)for(const o of os){const p=at(P,t0+dt*f),[ux,uy]=tangent(P,t0+dt*f);tryAt(p[0]-uy*o*(h/2+5),p[1]+ux*o*(h/2+5),Math.abs(f-0.5)*4+Math.abs(o));}};
 along([0.5,0.4,0.6,0.3,0.7,0.22,0.78,0.15,0.85],[0,1,-1,2,-2]);
 if(best.hard>0)along([0.5,0.45,0.55,0.35,0.65,0.25,0.75,0.1,0.9],[3,-3,4,-4,5,-5,6,-6]);
 // Still no room: the free place nearest the curve's middle, tied to it by a leader line.
 if(best.hard>0){let near=null;for(let y=h/2+3;y<H-h/2-3;y+=6)for(let x=w/2+3;x<W-w/2-3;x+=8){const b=[x-w/2,y-h/2,x+w/2,y+h/2];
  if(hardOf(b)==0){const d=Math.hypot(x-mid[0],y-mid[1]);if(!near||d<near.d)near={d,x,y,b};}}
  if(near){best={sc:0,b:near.b,x:near.x,y:near.y,hard:0};el('path',{class:'leader',d:'M'+f1(mid[0])+' '+f1(mid[1])+'L'+f1(near.x)+' '+f1(near.y),stroke:'#8a93a6','stroke-dasharray':'3 3',fill:'none'},e.g);}}
 placed.push(best.b);
 t.setAttribute('x',best.x);t.setAttribute('y',best.y);t.querySelectorAll('tspan.port,tspan.more').forEach(s=>s.setAttribute('x',best.x));
 const bb2=t.getBBox();Object.entries({x:f1(bb2.x-5),y:f1(bb2.y-2),width:f1(bb2.width+10),height:f1(bb2.height+4)}).forEach(([k,v])=>r.setAttribute(k,v));
 t.setAttribute('transform','translate(0 '+f1(best.y-(bb2.y+bb2.height/2))+')');r.setAttribute('y',f1(best.y-h/2));
 g.addEventListener('click',()=>pick(e));e.label=g;});
// The flow table; a picked edge (click, or #from=…&to=… in the address) shows its ports and only its flows.
const tb=document.querySelector('#flows tbody'),fi=document.getElementById('filter');
const nconn=edges.reduce((s,e)=>s+e.ports.length,0);
function pick(e){location.hash=e?'from='+encodeURIComponent(e.source)+'&to='+encodeURIComponent(e.destination):'';}
function fromHash(){const h=new URLSearchParams(location.hash.slice(1));sel=byKey[h.get('from')+'\u2192'+h.get('to')]||null;
 svg.classList.toggle('selecting',!!sel);document.querySelectorAll('#map .selected').forEach(x=>x.classList.remove('selected'));
 const dv=document.getElementById('detail');dv.hidden=!sel;
 if(sel){document.querySelectorAll('#edges .edge').forEach(g=>{if(g.dataset.source==sel.source&&g.dataset.destination==sel.destination)g.classList.add('selected');});sel.label.classList.add('selected');
  document.getElementById('detail-title').textContent=sel.source+' → '+sel.destination;const pb=document.querySelector('#edge-ports tbody');pb.innerHTML='';
  sel.ports.forEach(p=>{const tr=document.createElement('tr');tr.className='edge-port';tr.dataset.port=p.port;[p.port,p.forwarded,p.dropped,p.audit,p.error,p.rules.join('; ')].forEach((v,i)=>{const td=document.createElement('td');td.textContent=v;if(i&&i<5&&v>0)td.className=VS[i-1].toUpperCase();tr.appendChild(td);});pb.appendChild(tr);});}
 draw(fi.value);}
function draw(q){tb.innerHTML='';let k=0;for(const r of D.rows){if(sel&&(r.reply||r.src!=sel.source||r.dst!=sel.destination))continue;
 const s=[r.time,r.source,r.destination,r.port,r.verdict,r.summary,r.rule].join(' ');
 if(q&&!s.toLowerCase().includes(q.toLowerCase()))continue;k++;const tr=document.createElement('tr');
 [r.time,r.source,r.destination,r.port,r.verdict,r.summary,r.rule].forEach((v,i)=>{const td=document.createElement('td');td.textContent=v;if(i==4)td.className=v;tr.appendChild(td);});tb.appendChild(tr);}
 document.getElementById('stats').textContent=N+' workloads, '+nconn+' connections on '+edges.length+' edges, '+k+' of '+D.rows.length+' flows shown'+(sel?' (edge '+sel.source+' → '+sel.destination+')':'');}
document.getElementById('detail-clear').addEventListener('click',()=>pick(null));
window.addEventListener('hashchange',fromHash);fi.addEventListener('input',e=>draw(e.target.value));fromHash();
</script></body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::*;

    fn mk(v: Verdict, src: &str, dst: &str, port: u32) -> FlowsResponse {
        let ep = |app: &str| Endpoint {
            namespace: "default".into(),
            pod_name: format!("{app}-1"),
            labels: vec![format!("k8s:app={app}")],
            ..Default::default()
        };
        FlowsResponse {
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
                source: Some(ep(src)),
                destination: Some(ep(dst)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn edges_carry_verdicts_and_the_page_embeds_them() {
        let flows = vec![
            mk(Verdict::Forwarded, "frontend", "backend", 80),
            mk(Verdict::Dropped, "frontend", "backend", 80),
            mk(Verdict::Dropped, "frontend", "backend", 22),
        ];
        let m = build(&flows);
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.edges.len(), 1, "one edge per (source, destination)");
        let e = &m.edges[0];
        let ports: Vec<&str> = e.ports.iter().map(|p| p.port.as_str()).collect();
        assert_eq!(ports, ["22/TCP", "80/TCP"]);
        assert_eq!(e.ports[1].verdicts(), ["forwarded", "dropped"]);
        assert_eq!(e.ports[0].verdicts(), ["dropped"]);
        assert_eq!((e.forwarded(), e.dropped(), e.audit()), (1, 2, 0));
        let page = render_page("Palisade </script>", &flows);
        assert!(page.contains("default/frontend"));
        assert!(!page.contains("Palisade </script>"));
    }

    #[test]
    fn proxy_errors_are_a_lane_of_their_own_and_redirects_pass() {
        let flows = vec![
            mk(Verdict::Error, "frontend", "backend", 80),
            mk(Verdict::Redirected, "frontend", "backend", 80),
            mk(Verdict::Forwarded, "frontend", "backend", 8080),
        ];
        let e = &build(&flows).edges[0];
        assert_eq!(e.ports[0].verdicts(), ["forwarded", "error"]);
        assert_eq!(
            (e.forwarded(), e.dropped(), e.audit(), e.error()),
            (2, 0, 0, 1)
        );
        assert_eq!(e.verdicts(), ["forwarded", "error"]);
    }

    #[test]
    fn directions_are_separate_edges_and_audit_is_never_folded_away() {
        let mut f = vec![
            mk(Verdict::Forwarded, "database", "myapp", 80),
            mk(Verdict::Dropped, "database", "myapp", 80),
            mk(Verdict::Audit, "database", "myapp", 3306),
            mk(Verdict::Forwarded, "myapp", "database", 3306),
            mk(Verdict::Forwarded, "myapp", "database", 80),
        ];
        // A reply is not a connection of its own.
        let mut reply = mk(Verdict::Forwarded, "database", "myapp", 40000);
        reply.flow.as_mut().expect("flow").is_reply = Some(true);
        f.push(reply);
        let m = build(&f);
        assert_eq!(m.edges.len(), 2);
        let db = m
            .edges
            .iter()
            .find(|e| e.source == "default/database")
            .expect("database → myapp");
        assert_eq!(db.destination, "default/myapp");
        assert_eq!(db.verdicts(), ["forwarded", "dropped", "audit"]);
        let p3306 = db
            .ports
            .iter()
            .find(|p| p.port == "3306/TCP")
            .expect("3306");
        assert_eq!(p3306.verdicts(), ["audit"]);
        assert_eq!(db.ports.len(), 2, "the reply's port is no connection");
        let back = m
            .edges
            .iter()
            .find(|e| e.source == "default/myapp")
            .expect("myapp → database");
        assert_eq!(
            back.ports.iter().map(|p| &p.port[..]).collect::<Vec<_>>(),
            ["80/TCP", "3306/TCP"],
            "ports by number, not as text"
        );
    }
}
