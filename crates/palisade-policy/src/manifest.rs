//! Manifest decoding and validation: YAML/JSON text in, typed objects and
//! located diagnostics out.
//!
//! Reads `cilium.io/v2` CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
//! and CiliumCIDRGroup, `networking.k8s.io/v1` NetworkPolicy, bare JSON rule
//! lists (as `cilium policy import` took them, read as clusterwide rules),
//! `kind: List`, and the cluster state (`v1` Namespace, Pod, Node, Service).
//! Everything Cilium's `Rule.Sanitize` rejects is rejected here, and unknown
//! fields and wrong types are errors too.

use crate::api::*;
use crate::cluster::{
    CidrGroup, ContainerPort, Namespace, Node as ClusterNode, Pod, Service, ServicePort,
};
use crate::decode::{Ctx, Diagnostic, Obj, index, join};
use crate::fqdn::NameMatcher;
use crate::l7::{
    DnsRule, FullRegex, HeaderMatch, HttpRule, KafkaRule, MismatchAction, kafka_api_key,
    kafka_role_keys,
};
use crate::labels::{LabelKey, SOURCE_ANY};
use crate::node::{Node, Pos, Value, parse_documents};
use crate::selector::{Operator, Requirement, Selector};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Agent options that change what is valid (Cilium gates these features
/// behind non-default agent flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `enable-node-selector-labels`: allows fromNodes/toNodes.
    pub enable_node_selector_labels: bool,
    /// `enable-extended-ip-protocols`: allows VRRP/IGMP and empty ports.
    pub enable_extended_ip_protocols: bool,
}

/// A decoded object.
#[derive(Clone, Debug)]
pub enum Object {
    Policy(Policy),
    Namespace(Namespace),
    Pod(Pod),
    Node(ClusterNode),
    Service(Service),
    CidrGroup(CidrGroup),
    /// A kind Palisade recognises but does not act on (workloads, Envoy configs).
    Skipped {
        kind: String,
        name: String,
    },
}

/// The outcome of one document (or one rule of a rule list).
#[derive(Debug)]
pub struct DocResult {
    pub kind: String,
    pub name: String,
    pub pos: Pos,
    /// Whether the document is a policy (for the validate summary).
    pub is_policy: bool,
    /// `Some` only when the document has no error.
    pub object: Option<Object>,
    pub errors: Vec<Diagnostic>,
}

/// Decodes every document of one file. A syntax error makes the whole file
/// one failed document.
pub fn parse_file(file: &str, text: &str, opts: &Options) -> Vec<DocResult> {
    let docs = match parse_documents(text) {
        Ok(d) => d,
        Err(e) => {
            return vec![DocResult {
                kind: String::new(),
                name: String::new(),
                pos: e.pos,
                is_policy: true,
                object: None,
                errors: vec![Diagnostic {
                    file: file.to_string(),
                    line: e.pos.line,
                    column: e.pos.column,
                    field: String::new(),
                    message: format!("invalid YAML: {}", e.message),
                }],
            }];
        }
    };
    let stem = file_stem(file);
    let mut out = Vec::new();
    for doc in &docs {
        decode_top(file, &stem, doc, "", opts, &mut out);
    }
    out
}

fn file_stem(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.rsplit_once('.')
        .map(|(s, _)| s)
        .unwrap_or(base)
        .to_string()
}

fn decode_top(
    file: &str,
    stem: &str,
    doc: &Node,
    path: &str,
    opts: &Options,
    out: &mut Vec<DocResult>,
) {
    if let Value::Seq(items) = &doc.value {
        // A bare rule list: each rule is a clusterwide policy.
        for (i, item) in items.iter().enumerate() {
            let mut ctx = Ctx::new(file);
            let section = index(path, i);
            let name = format!("{stem}[{i}]");
            let rule = decode_rule(
                &mut ctx,
                item,
                &section,
                item.pos,
                PolicyKind::CiliumClusterwideNetworkPolicy,
                opts,
            );
            let object = rule.filter(|_| ctx.errors.is_empty()).map(|r| {
                Object::Policy(Policy {
                    id: PolicyId {
                        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
                        namespace: None,
                        name: name.clone(),
                    },
                    annotations: BTreeMap::new(),
                    rules: vec![r],
                    file: file.to_string(),
                    pos: item.pos,
                })
            });
            out.push(DocResult {
                kind: "rule".into(),
                name,
                pos: item.pos,
                is_policy: true,
                object,
                errors: ctx.errors,
            });
        }
        return;
    }
    let mut ctx = Ctx::new(file);
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind == "List" {
        let Some(o) = ctx.object(doc, path, &["apiVersion", "kind", "metadata", "items"]) else {
            push_failed(out, "List", doc.pos, ctx);
            return;
        };
        if let Some(items) = o.get("items") {
            let items_path = o.field("items");
            if let Some(items) = ctx.seq(items, &items_path) {
                for (i, item) in items.iter().enumerate() {
                    decode_top(file, stem, item, &index(&items_path, i), opts, out);
                }
            }
        }
        if !ctx.errors.is_empty() {
            push_failed(out, "List", doc.pos, ctx);
        }
        return;
    }
    let result = decode_object(&mut ctx, doc, path, opts);
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let is_policy = !matches!(
        kind,
        "Namespace"
            | "Pod"
            | "Node"
            | "Service"
            | "CiliumCIDRGroup"
            | "ServiceAccount"
            | "Deployment"
            | "DaemonSet"
            | "StatefulSet"
            | "ReplicaSet"
            | "Job"
            | "ConfigMap"
            | "Secret"
            | "CiliumEnvoyConfig"
            | "CiliumClusterwideEnvoyConfig"
    );
    out.push(DocResult {
        kind: kind.to_string(),
        name,
        pos: doc.pos,
        is_policy,
        object: result.filter(|_| ctx.errors.is_empty()),
        errors: ctx.errors,
    });
}

fn push_failed(out: &mut Vec<DocResult>, kind: &str, pos: Pos, ctx: Ctx<'_>) {
    out.push(DocResult {
        kind: kind.to_string(),
        name: String::new(),
        pos,
        is_policy: false,
        object: None,
        errors: ctx.errors,
    });
}

const METADATA_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

const KINDS: &[&str] = &[
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "CiliumCIDRGroup",
    "NetworkPolicy",
    "Namespace",
    "Pod",
    "Node",
    "Service",
    "List",
];

struct Meta {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn decode_meta(ctx: &mut Ctx, o: &Obj, require_name: bool) -> Meta {
    let mut meta = Meta {
        name: String::new(),
        namespace: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    };
    let path = o.field("metadata");
    let Some(m) = o.get("metadata") else {
        if require_name {
            ctx.error(
                o.node.pos,
                &path,
                "metadata is required (with at least metadata.name)",
            );
        }
        return meta;
    };
    let Some(mo) = ctx.object(m, &path, METADATA_FIELDS) else {
        return meta;
    };
    match mo.get_some("name") {
        Some(n) => {
            if let Some(s) = ctx.string(n, &mo.field("name")) {
                if s.is_empty() {
                    ctx.error(n.pos, &mo.field("name"), "name must not be empty");
                } else if !is_dns_subdomain(&s) {
                    ctx.error(
                        n.pos,
                        &mo.field("name"),
                        format!(
                            "invalid name \"{s}\": metadata.name must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
                        ),
                    );
                }
                meta.name = s;
            }
        }
        None if require_name => ctx.error(m.pos, &mo.field("name"), "metadata.name is required"),
        None => {}
    }
    if let Some(n) = mo.get_some("namespace") {
        meta.namespace = ctx
            .string(n, &mo.field("namespace"))
            .filter(|s| !s.is_empty());
        if let Some(ns) = &meta.namespace
            && !is_dns_label(ns)
        {
            ctx.error(
                n.pos,
                &mo.field("namespace"),
                format!(
                    "invalid namespace \"{ns}\": metadata.namespace must be a lowercase RFC 1123 label (a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63 characters)"
                ),
            );
        }
    }
    if let Some(l) = mo.get("labels") {
        for (_, k, v) in ctx.string_map(l, &mo.field("labels")) {
            meta.labels.insert(k, v);
        }
    }
    if let Some(a) = mo.get("annotations") {
        for (_, k, v) in ctx.string_map(a, &mo.field("annotations")) {
            meta.annotations.insert(k, v);
        }
    }
    meta
}

/// A Kubernetes object name: a lowercase RFC 1123 subdomain.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label_part)
}

/// A namespace name: a lowercase RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_part(s)
}

fn is_dns_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_api_version(ctx: &mut Ctx, o: &Obj, kind: &str, valid: &[&str]) {
    match o.get("apiVersion") {
        None => ctx.error(
            o.node.pos,
            &o.field("apiVersion"),
            format!(
                "apiVersion is required; for {kind} use {}",
                valid.join(" or ")
            ),
        ),
        Some(v) => {
            if let Some(s) = ctx.string(v, &o.field("apiVersion"))
                && !valid.contains(&s.as_str())
            {
                ctx.error(
                    v.pos,
                    &o.field("apiVersion"),
                    format!(
                        "apiVersion \"{s}\" does not serve {kind}; use {}",
                        valid.join(" or ")
                    ),
                );
            }
        }
    }
}

fn decode_object(ctx: &mut Ctx, doc: &Node, path: &str, opts: &Options) -> Option<Object> {
    let Value::Map(_) = &doc.value else {
        ctx.error(
            doc.pos,
            path,
            format!(
                "expected a Kubernetes object (a mapping with apiVersion and kind) or a list of rules, found {}",
                doc.type_name()
            ),
        );
        return None;
    };
    let kind_node = doc.get("kind");
    let kind = match kind_node {
        None => {
            // Report unknown top-level keys (such as a misspelled apiVersion) too.
            let _ = ctx.object(
                doc,
                path,
                &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
            );
            ctx.error(
                doc.pos,
                &join(path, "kind"),
                format!("kind is required; one of {}", KINDS.join(", ")),
            );
            return None;
        }
        Some(k) => ctx.string(k, &join(path, "kind"))?,
    };
    match kind.as_str() {
        "CiliumNetworkPolicy" => {
            decode_cilium_policy(ctx, doc, path, PolicyKind::CiliumNetworkPolicy, opts)
        }
        "CiliumClusterwideNetworkPolicy" => decode_cilium_policy(
            ctx,
            doc,
            path,
            PolicyKind::CiliumClusterwideNetworkPolicy,
            opts,
        ),
        "NetworkPolicy" => decode_network_policy(ctx, doc, path),
        "CiliumCIDRGroup" => decode_cidr_group(ctx, doc, path),
        "Namespace" => decode_namespace(ctx, doc, path),
        "Pod" => decode_pod(ctx, doc, path),
        "Node" => decode_node(ctx, doc, path),
        "Service" => decode_service(ctx, doc, path),
        "ServiceAccount"
        | "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "Job"
        | "ConfigMap"
        | "Secret"
        | "CiliumEnvoyConfig"
        | "CiliumClusterwideEnvoyConfig" => {
            let name = doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            Some(Object::Skipped { kind, name })
        }
        other => {
            let pos = kind_node.map_or(doc.pos, |k| k.pos);
            let mut msg = format!(
                "unsupported kind \"{other}\"; Palisade reads {}",
                KINDS.join(", ")
            );
            if let Some(best) = crate::decode::did_you_mean(other, KINDS) {
                msg.push_str(&format!(" (did you mean \"{best}\"?)"));
            }
            ctx.error(pos, &join(path, "kind"), msg);
            None
        }
    }
}

fn decode_cilium_policy(
    ctx: &mut Ctx,
    doc: &Node,
    path: &str,
    kind: PolicyKind,
    opts: &Options,
) -> Option<Object> {
    let o = ctx.object(
        doc,
        path,
        &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
    )?;
    check_api_version(ctx, &o, kind.as_str(), &["cilium.io/v2"]);
    let meta = decode_meta(ctx, &o, true);
    let namespace = match kind {
        PolicyKind::CiliumNetworkPolicy => {
            Some(meta.namespace.clone().unwrap_or_else(|| "default".into()))
        }
        _ => {
            if let Some(ns) = &meta.namespace {
                let mpos = o
                    .get("metadata")
                    .map_or(o.node.pos, |m| m.get("namespace").map_or(m.pos, |n| n.pos));
                ctx.error(
                    mpos,
                    &join(&o.field("metadata"), "namespace"),
                    format!(
                        "{} is cluster-scoped and cannot have a namespace (\"{ns}\"); remove it or use a CiliumNetworkPolicy",
                        kind.as_str()
                    ),
                );
            }
            None
        }
    };
    let mut rules = Vec::new();
    if let Some(spec) = o.get_some("spec")
        && let Some(r) = decode_rule(ctx, spec, &o.field("spec"), o.key_pos("spec"), kind, opts)
    {
        rules.push(r);
    }
    if let Some(specs) = o.get_some("specs") {
        let sp = o.field("specs");
        if let Some(items) = ctx.seq(specs, &sp) {
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = decode_rule(ctx, item, &index(&sp, i), item.pos, kind, opts) {
                    rules.push(r);
                }
            }
        }
    }
    if !o.has("spec") && !o.has("specs") {
        ctx.error(
            o.node.pos,
            &o.field("spec"),
            format!(
                "{} must have spec or specs (one rule, or a list of rules)",
                kind.as_str()
            ),
        );
    }
    Some(Object::Policy(Policy {
        id: PolicyId {
            kind,
            namespace,
            name: meta.name,
        },
        annotations: meta.annotations,
        rules,
        file: ctx.file.to_string(),
        pos: doc.pos,
    }))
}

const RULE_FIELDS: &[&str] = &[
    "endpointSelector",
    "nodeSelector",
    "ingress",
    "ingressDeny",
    "egress",
    "egressDeny",
    "labels",
    "description",
    "enableDefaultDeny",
    "log",
];

/// Decodes and validates one Cilium rule. `anchor` is where rule-level
/// errors point (the `spec` key or the list item).
pub fn decode_rule(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    anchor: Pos,
    kind: PolicyKind,
    opts: &Options,
) -> Option<Rule> {
    let o = ctx.object(node, path, RULE_FIELDS)?;
    let anchor = if node.pos.line == anchor.line {
        node.pos
    } else {
        anchor
    };
    let subject = match (o.get_some("endpointSelector"), o.get_some("nodeSelector")) {
        (Some(e), None) => {
            decode_selector(ctx, e, &o.field("endpointSelector")).map(Subject::EndpointSelector)
        }
        (None, Some(n)) => {
            if kind == PolicyKind::CiliumNetworkPolicy {
                ctx.error(
                    o.key_pos("nodeSelector"),
                    &o.field("nodeSelector"),
                    "nodeSelector (host policy) is only allowed in a CiliumClusterwideNetworkPolicy; a CiliumNetworkPolicy must use endpointSelector",
                );
            }
            decode_selector(ctx, n, &o.field("nodeSelector")).map(Subject::NodeSelector)
        }
        (Some(_), Some(_)) => {
            ctx.error(
                o.key_pos("nodeSelector"),
                &o.field("nodeSelector"),
                "a rule cannot have both endpointSelector and nodeSelector; choose one",
            );
            None
        }
        (None, None) => {
            ctx.error(
                anchor,
                &o.field("endpointSelector"),
                "a rule must have one of endpointSelector or nodeSelector (endpointSelector: {} selects every endpoint)",
            );
            None
        }
    };
    let is_host = matches!(subject, Some(Subject::NodeSelector(_)));
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for (field, dir, deny) in [
        ("ingress", Direction::Ingress, false),
        ("ingressDeny", Direction::Ingress, true),
        ("egress", Direction::Egress, false),
        ("egressDeny", Direction::Egress, true),
    ] {
        let Some(list) = o.get(field) else { continue };
        let fp = o.field(field);
        let Some(items) = ctx.seq(list, &fp) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let section = format!("{field}[{i}]");
            let el = ElementCtx {
                dir,
                deny,
                is_host,
                opts,
            };
            if let Some(pr) = decode_peer_rule(ctx, item, &index(&fp, i), section, &el) {
                match dir {
                    Direction::Ingress => ingress.push(pr),
                    Direction::Egress => egress.push(pr),
                }
            }
        }
    }
    let has = |f: &str| {
        o.get(f)
            .is_some_and(|n| matches!(&n.value, Value::Seq(s) if !s.is_empty()))
    };
    let has_ingress = has("ingress") || has("ingressDeny");
    let has_egress = has("egress") || has("egressDeny");
    if !has_ingress && !has_egress {
        // `ingress: []` counts as present for Cilium only when non-nil; an
        // empty list of rules still makes a rule with no sections.
        let present = ["ingress", "ingressDeny", "egress", "egressDeny"]
            .iter()
            .any(|f| o.get(f).is_some_and(|n| !n.is_null()));
        if !present {
            ctx.error(
                anchor,
                path,
                "a rule must have at least one of ingress, ingressDeny, egress or egressDeny",
            );
        }
    }
    let mut default_deny = DefaultDeny {
        ingress: has_ingress.then_some(true),
        egress: has_egress.then_some(true),
    };
    if let Some(dd) = o.get_some("enableDefaultDeny") {
        let dp = o.field("enableDefaultDeny");
        if let Some(d) = ctx.object(dd, &dp, &["ingress", "egress"]) {
            if let Some(v) = d.get_some("ingress")
                && let Some(b) = ctx.boolean(v, &d.field("ingress"))
                && has_ingress
            {
                default_deny.ingress = Some(b);
            }
            if let Some(v) = d.get_some("egress")
                && let Some(b) = ctx.boolean(v, &d.field("egress"))
                && has_egress
            {
                default_deny.egress = Some(b);
            }
        }
    }
    let description = o
        .get_some("description")
        .and_then(|d| ctx.string(d, &o.field("description")));
    let mut labels = Vec::new();
    if let Some(l) = o.get_some("labels") {
        let lp = o.field("labels");
        if let Some(items) = ctx.seq(l, &lp) {
            for (i, item) in items.iter().enumerate() {
                let ip = index(&lp, i);
                if let Some(lo) = ctx.object(item, &ip, &["key", "value", "source"]) {
                    let key = lo
                        .get_some("key")
                        .and_then(|k| ctx.string(k, &lo.field("key")));
                    let value = lo
                        .get_some("value")
                        .and_then(|k| ctx.string(k, &lo.field("value")))
                        .unwrap_or_default();
                    let source = lo
                        .get_some("source")
                        .and_then(|k| ctx.string(k, &lo.field("source")))
                        .unwrap_or_else(|| "unspec".into());
                    match key {
                        Some(k) if value.is_empty() => labels.push(format!("{source}:{k}")),
                        Some(k) => labels.push(format!("{source}:{k}={value}")),
                        None => ctx.error(item.pos, &ip, "a rule label needs a key"),
                    }
                }
            }
        }
    }
    let mut log = None;
    if let Some(l) = o.get_some("log") {
        let lp = o.field("log");
        if let Some(lo) = ctx.object(l, &lp, &["value"])
            && let Some(v) = lo.get_some("value")
            && let Some(s) = ctx.string(v, &lo.field("value"))
        {
            if s.len() > 32 || s.chars().any(|c| !(' '..='~').contains(&c)) {
                ctx.error(
                    v.pos,
                    &lo.field("value"),
                    "log.value must be at most 32 printable ASCII characters",
                );
            }
            log = Some(s);
        }
    }
    let section = path.rsplit('.').next().unwrap_or(path).to_string();
    Some(Rule {
        section: if section.is_empty() {
            "spec".into()
        } else {
            section
        },
        subject: subject?,
        ingress,
        egress,
        default_deny,
        description,
        labels,
        log,
    })
}

struct ElementCtx<'a> {
    dir: Direction,
    deny: bool,
    is_host: bool,
    opts: &'a Options,
}

fn element_fields(el: &ElementCtx) -> Vec<&'static str> {
    let mut f = match el.dir {
        Direction::Ingress => vec![
            "fromEndpoints",
            "fromRequires",
            "fromCIDR",
            "fromCIDRSet",
            "fromEntities",
            "fromGroups",
            "fromNodes",
            "toPorts",
            "icmps",
        ],
        Direction::Egress => vec![
            "toEndpoints",
            "toRequires",
            "toCIDR",
            "toCIDRSet",
            "toEntities",
            "toGroups",
            "toNodes",
            "toServices",
            "toPorts",
            "icmps",
        ],
    };
    if !el.deny {
        f.push("authentication");
        if el.dir == Direction::Egress {
            f.push("toFQDNs");
        }
    }
    f
}

fn decode_peer_rule(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    section: String,
    el: &ElementCtx,
) -> Option<PeerRule> {
    let allowed = element_fields(el);
    let errors_before = ctx.errors.len();
    let o = ctx.object(node, path, &allowed)?;
    let (pre,) = (if el.dir == Direction::Ingress {
        "from"
    } else {
        "to"
    },);
    // fromRequires / toRequires were removed from the API in Cilium 1.19.
    let req_field = format!("{pre}Requires");
    if let Some(r) = o.get_some(&req_field)
        && !matches!(&r.value, Value::Seq(s) if s.is_empty())
    {
        ctx.error(
            o.key_pos(&req_field),
            &o.field(&req_field),
            format!(
                "{req_field} is no longer supported (removed in Cilium 1.19); express the requirement in {pre}Endpoints selectors or the endpointSelector instead"
            ),
        );
    }
    // The L3 members: at most one kind.
    let l3_fields: Vec<String> = [
        "Endpoints",
        "CIDR",
        "CIDRSet",
        "Entities",
        "Nodes",
        "Groups",
        "Services",
        "FQDNs",
    ]
    .iter()
    .map(|k| format!("{pre}{k}"))
    .filter(|f| allowed.contains(&f.as_str()))
    .collect();
    let present: Vec<&String> = l3_fields
        .iter()
        .filter(|f| {
            o.get_some(f)
                .is_some_and(|n| !matches!(&n.value, Value::Seq(s) if s.is_empty()))
        })
        .collect();
    if present.len() > 1 {
        ctx.error(
            o.key_pos(present[1]),
            &o.field(present[1]),
            format!(
                "combining {} and {} is not supported yet; put them in separate {} rules",
                present[0],
                present[1],
                if el.dir == Direction::Ingress {
                    "ingress"
                } else {
                    "egress"
                }
            ),
        );
    }
    let chosen = present.first().map(|s| s.as_str()).or_else(|| {
        l3_fields
            .iter()
            .find(|f| o.get_some(f).is_some())
            .map(|s| s.as_str())
    });
    let peers = match chosen {
        None => Peers::Absent,
        Some(f) => {
            let n = o.get_some(f)?;
            let fp = o.field(f);
            let kind = &f[pre.len()..];
            decode_peers(ctx, kind, n, &fp, el)?
        }
    };
    // toPorts
    let mut to_ports = Vec::new();
    if let Some(tp) = o.get_some("toPorts") {
        let tpp = o.field("toPorts");
        if let Some(items) = ctx.seq(tp, &tpp) {
            for (i, item) in items.iter().enumerate() {
                if let Some(pr) =
                    decode_port_rule(ctx, item, &index(&tpp, i), format!("toPorts[{i}]"), el)
                {
                    to_ports.push(pr);
                }
            }
        }
    }
    // icmps
    let mut icmps = Vec::new();
    if let Some(ic) = o.get_some("icmps") {
        let icp = o.field("icmps");
        if !to_ports.is_empty() || o.has("toPorts") {
            ctx.error(
                o.key_pos("icmps"),
                &icp,
                "the icmps block may only be present without toPorts; put ICMP and ports in separate rules",
            );
        }
        if let Some(items) = ctx.seq(ic, &icp) {
            for (i, item) in items.iter().enumerate() {
                let ip = index(&icp, i);
                let Some(io) = ctx.object(item, &ip, &["fields"]) else {
                    continue;
                };
                let Some(fields) = io.get_some("fields") else {
                    continue;
                };
                let fp = io.field("fields");
                let Some(fitems) = ctx.seq(fields, &fp) else {
                    continue;
                };
                if fitems.len() > 40 {
                    ctx.error(fields.pos, &fp, "too many ICMP fields, the max is 40");
                }
                for (j, f) in fitems.iter().enumerate() {
                    if let Some(field) = decode_icmp_field(ctx, f, &index(&fp, j)) {
                        icmps.push(field);
                    }
                }
            }
        }
    }
    let mut authentication = None;
    if let Some(a) = o.get_some("authentication") {
        let ap = o.field("authentication");
        if let Some(ao) = ctx.object(a, &ap, &["mode"]) {
            match ao.get_some("mode") {
                None => ctx.error(
                    a.pos,
                    &ao.field("mode"),
                    "authentication.mode is required: disabled, required or test-always-fail",
                ),
                Some(m) => {
                    if let Some(s) = ctx.string(m, &ao.field("mode")) {
                        match AuthMode::parse(&s) {
                            Some(mode) => authentication = Some(mode),
                            None => ctx.error(m.pos, &ao.field("mode"), format!("unknown authentication mode \"{s}\"; valid: disabled, required, test-always-fail")),
                        }
                    }
                }
            }
        }
    }
    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(PeerRule {
        section,
        deny: el.deny,
        peers,
        to_ports,
        icmps,
        authentication,
    })
}

fn decode_peers(ctx: &mut Ctx, kind: &str, n: &Node, fp: &str, el: &ElementCtx) -> Option<Peers> {
    Some(match kind {
        "Endpoints" => {
            let items = ctx.seq(n, fp)?;
            let mut sels = Vec::new();
            for (i, item) in items.iter().enumerate() {
                sels.push(decode_selector(ctx, item, &index(fp, i))?);
            }
            Peers::Endpoints(sels)
        }
        "Nodes" => {
            if !el.opts.enable_node_selector_labels {
                ctx.error(
                    n.pos,
                    fp,
                    "fromNodes/toNodes require the agent option enable-node-selector-labels (off by default); turn it on in Palisade's configuration or use the remote-node/host entities",
                );
            }
            let items = ctx.seq(n, fp)?;
            let mut sels = Vec::new();
            for (i, item) in items.iter().enumerate() {
                sels.push(decode_selector(ctx, item, &index(fp, i))?);
            }
            Peers::Nodes(sels)
        }
        "CIDR" => {
            let mut rules = Vec::new();
            for (pos, s) in ctx.strings(n, fp) {
                match Cidr::parse(&s) {
                    Ok(c) => rules.push(CidrRule {
                        source: CidrSource::Cidr(c),
                        except: vec![],
                    }),
                    Err(e) => ctx.error(pos, fp, e),
                }
            }
            Peers::Cidr(rules)
        }
        "CIDRSet" => {
            let items = ctx.seq(n, fp)?;
            let mut rules = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = decode_cidr_rule(ctx, item, &index(fp, i)) {
                    rules.push(r);
                }
            }
            Peers::CidrSet(rules)
        }
        "Entities" => {
            let mut ents = Vec::new();
            for (pos, s) in ctx.strings(n, fp) {
                match Entity::parse(&s) {
                    Some(e) => ents.push(e),
                    None => {
                        let mut msg = format!(
                            "unsupported entity \"{s}\"; valid entities: {}",
                            Entity::NAMES.join(", ")
                        );
                        if let Some(b) = crate::decode::did_you_mean(&s, Entity::NAMES) {
                            msg.push_str(&format!(" (did you mean \"{b}\"?)"));
                        }
                        ctx.error(pos, fp, msg);
                    }
                }
            }
            Peers::Entities(ents)
        }
        "Groups" => {
            let items = ctx.seq(n, fp)?;
            for (i, item) in items.iter().enumerate() {
                let ip = index(fp, i);
                if let Some(g) = ctx.object(item, &ip, &["aws"])
                    && let Some(a) = g.get_some("aws")
                {
                    let _ = ctx.object(
                        a,
                        &g.field("aws"),
                        &[
                            "labels",
                            "securityGroupsIds",
                            "securityGroupsNames",
                            "region",
                        ],
                    );
                }
            }
            Peers::Groups(items.len())
        }
        "Services" => {
            let items = ctx.seq(n, fp)?;
            let mut svcs = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ip = index(fp, i);
                let Some(so) = ctx.object(item, &ip, &["k8sService", "k8sServiceSelector"]) else {
                    continue;
                };
                if so.has("k8sService") && so.has("k8sServiceSelector") {
                    ctx.error(item.pos, &ip, "a toServices entry takes one of k8sService or k8sServiceSelector, not both");
                }
                if let Some(s) = so.get_some("k8sService") {
                    let sp = so.field("k8sService");
                    if let Some(o) = ctx.object(s, &sp, &["serviceName", "namespace"]) {
                        let name = o
                            .get_some("serviceName")
                            .and_then(|v| ctx.string(v, &o.field("serviceName")));
                        let namespace = o
                            .get_some("namespace")
                            .and_then(|v| ctx.string(v, &o.field("namespace")));
                        match name {
                            Some(name) => svcs.push(ServiceRef::K8sService { name, namespace }),
                            None => ctx.error(
                                s.pos,
                                &o.field("serviceName"),
                                "k8sService.serviceName is required",
                            ),
                        }
                    }
                } else if let Some(s) = so.get_some("k8sServiceSelector") {
                    let sp = so.field("k8sServiceSelector");
                    if let Some(o) = ctx.object(s, &sp, &["selector", "namespace"]) {
                        let namespace = o
                            .get_some("namespace")
                            .and_then(|v| ctx.string(v, &o.field("namespace")));
                        match o.get_some("selector") {
                            Some(sel) => {
                                if let Some(selector) =
                                    decode_selector(ctx, sel, &o.field("selector"))
                                {
                                    svcs.push(ServiceRef::K8sServiceSelector {
                                        selector,
                                        namespace,
                                    });
                                }
                            }
                            None => ctx.error(
                                s.pos,
                                &o.field("selector"),
                                "k8sServiceSelector.selector is required",
                            ),
                        }
                    }
                } else {
                    svcs.push(ServiceRef::Empty);
                }
            }
            Peers::Services(svcs)
        }
        "FQDNs" => {
            let items = ctx.seq(n, fp)?;
            let mut sels = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = decode_fqdn(ctx, item, &index(fp, i)) {
                    sels.push(s);
                }
            }
            Peers::Fqdns(sels)
        }
        _ => return None,
    })
}

fn decode_fqdn(ctx: &mut Ctx, item: &Node, ip: &str) -> Option<FqdnSelector> {
    let o = ctx.object(item, ip, &["matchName", "matchPattern"])?;
    let name = o
        .get_some("matchName")
        .and_then(|v| ctx.string(v, &o.field("matchName")));
    let pattern = o
        .get_some("matchPattern")
        .and_then(|v| ctx.string(v, &o.field("matchPattern")));
    let matcher = match (&name, &pattern) {
        (Some(_), Some(_)) => {
            ctx.error(
                o.key_pos("matchPattern"),
                &o.field("matchPattern"),
                "matchName and matchPattern cannot both be set; use one per entry",
            );
            return None;
        }
        (Some(n), None) => {
            NameMatcher::name(n).map_err(|e| (o.field("matchName"), o.get("matchName"), e))
        }
        (None, Some(p)) => {
            NameMatcher::pattern(p).map_err(|e| (o.field("matchPattern"), o.get("matchPattern"), e))
        }
        (None, None) => {
            ctx.error(item.pos, ip, "an entry needs matchName or matchPattern");
            return None;
        }
    };
    match matcher {
        Ok(matcher) => Some(FqdnSelector {
            match_name: name,
            match_pattern: pattern,
            matcher,
        }),
        Err((field, node, e)) => {
            ctx.error(node.map_or(item.pos, |n| n.pos), &field, e);
            None
        }
    }
}

fn decode_cidr_rule(ctx: &mut Ctx, item: &Node, ip: &str) -> Option<CidrRule> {
    let o = ctx.object(
        item,
        ip,
        &["cidr", "cidrGroupRef", "cidrGroupSelector", "except"],
    )?;
    let set: Vec<&str> = ["cidr", "cidrGroupRef", "cidrGroupSelector"]
        .into_iter()
        .filter(|f| o.has(f))
        .collect();
    if set.len() != 1 {
        ctx.error(
            item.pos,
            ip,
            format!(
                "a CIDR set entry needs exactly one of cidr, cidrGroupRef or cidrGroupSelector (found {})",
                if set.is_empty() { "none".to_string() } else { set.join(" and ") }
            ),
        );
        return None;
    }
    let source = match set[0] {
        "cidr" => {
            let n = o.get_some("cidr")?;
            let s = ctx.string(n, &o.field("cidr"))?;
            match Cidr::parse(&s) {
                Ok(c) => CidrSource::Cidr(c),
                Err(e) => {
                    ctx.error(n.pos, &o.field("cidr"), e);
                    return None;
                }
            }
        }
        "cidrGroupRef" => {
            let n = o.get_some("cidrGroupRef")?;
            CidrSource::CidrGroupRef(ctx.string(n, &o.field("cidrGroupRef"))?)
        }
        _ => {
            let n = o.get_some("cidrGroupSelector")?;
            CidrSource::CidrGroupSelector(decode_selector(ctx, n, &o.field("cidrGroupSelector"))?)
        }
    };
    let mut except = Vec::new();
    if let Some(e) = o.get_some("except") {
        let ep = o.field("except");
        for (pos, s) in ctx.strings(e, &ep) {
            match Cidr::parse(&s) {
                Ok(c) => {
                    if let CidrSource::Cidr(base) = &source {
                        if base.is_ipv4() != c.is_ipv4() {
                            ctx.error(
                                pos,
                                &ep,
                                format!(
                                    "except {c} is not in the same address family as cidr {base}"
                                ),
                            );
                        } else if !base.contains(&c) {
                            ctx.error(pos, &ep, format!("allow CIDR prefix {base} does not contain except CIDR prefix {c}; an except must lie inside its cidr"));
                        }
                    }
                    except.push(c);
                }
                Err(e) => ctx.error(pos, &ep, e),
            }
        }
    }
    Some(CidrRule { source, except })
}

fn decode_icmp_field(ctx: &mut Ctx, f: &Node, fp: &str) -> Option<IcmpField> {
    let o = ctx.object(f, fp, &["family", "type"])?;
    let family = match o.get_some("family") {
        None => IcmpFamily::IPv4,
        Some(n) => match ctx.string(n, &o.field("family"))?.as_str() {
            "IPv4" => IcmpFamily::IPv4,
            "IPv6" => IcmpFamily::IPv6,
            other => {
                ctx.error(
                    n.pos,
                    &o.field("family"),
                    format!("unknown ICMP family \"{other}\"; valid: IPv4, IPv6"),
                );
                return None;
            }
        },
    };
    let Some(t) = o.get_some("type") else {
        ctx.error(
            f.pos,
            &o.field("type"),
            "an ICMP field needs a type (a number 0-255 or a name such as EchoRequest)",
        );
        return None;
    };
    let names = match family {
        IcmpFamily::IPv4 => ICMPV4_NAMES,
        IcmpFamily::IPv6 => ICMPV6_NAMES,
    };
    let icmp_type = match &t.value {
        Value::Int(i) if (0..=255).contains(i) => *i as u8,
        Value::Str(s) => {
            if let Ok(n) = s.parse::<u8>() {
                n
            } else if let Some((_, n)) = names.iter().find(|(name, _)| name == s) {
                *n
            } else {
                let valid: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                ctx.error(
                    t.pos,
                    &o.field("type"),
                    format!(
                        "unknown {family:?} ICMP type \"{s}\"; use a number 0-255 or one of {}",
                        valid.join(", ")
                    ),
                );
                return None;
            }
        }
        _ => {
            ctx.error(
                t.pos,
                &o.field("type"),
                "ICMP type must be a number 0-255 or a type name",
            );
            return None;
        }
    };
    Some(IcmpField { family, icmp_type })
}

fn decode_port_rule(
    ctx: &mut Ctx,
    item: &Node,
    ip: &str,
    section: String,
    el: &ElementCtx,
) -> Option<PortRule> {
    let fields: &[&str] = if el.deny {
        &["ports"]
    } else {
        &[
            "ports",
            "rules",
            "serverNames",
            "terminatingTLS",
            "originatingTLS",
            "listener",
        ]
    };
    let o = ctx.object(item, ip, fields)?;
    let mut ports = Vec::new();
    let mut port_nodes = Vec::new();
    if let Some(p) = o.get_some("ports") {
        let pp = o.field("ports");
        if let Some(items) = ctx.seq(p, &pp) {
            if items.len() > 40 {
                ctx.error(p.pos, &pp, format!("too many ports ({}), the max is 40; split them over several toPorts entries or use a port range (endPort)", items.len()));
            }
            for (i, pn) in items.iter().enumerate() {
                if let Some(pp2) = decode_port_protocol(ctx, pn, &index(&pp, i), el.opts) {
                    ports.push(pp2);
                    port_nodes.push(pn);
                }
            }
        }
    }
    let mut rules = None;
    if let Some(r) = o.get_some("rules") {
        rules = decode_l7(ctx, r, &o.field("rules"));
        if let Some(l7) = &rules {
            let is_dns = matches!(l7, L7Rules::Dns(_));
            if is_dns && el.dir == Direction::Ingress {
                ctx.error(o.key_pos("rules"), &o.field("rules.dns"), "DNS rules are only allowed on egress (they steer a pod's own lookups through the DNS proxy)");
            }
            if el.is_host && (el.dir == Direction::Ingress || !is_dns) {
                ctx.error(o.key_pos("rules"), &o.field("rules"), "L7 policy is not supported on host policies (nodeSelector) except DNS rules on egress");
            }
            if is_dns && ports.is_empty() {
                ctx.error(
                    o.key_pos("rules"),
                    &o.field("rules.dns"),
                    "DNS rules need ports: at least one port (usually 53 over UDP and TCP)",
                );
            }
            for (i, (pp2, pn)) in ports.iter().zip(&port_nodes).enumerate() {
                let ppath = format!("{}.ports[{i}]", o.path);
                if !is_dns && pp2.protocols != [Protocol::TCP] {
                    let proto = if pp2.protocols.len() > 1 {
                        "ANY".to_string()
                    } else {
                        pp2.protocols[0].to_string()
                    };
                    let pos = pn.get("protocol").map_or(pn.pos, |n| n.pos);
                    ctx.error(pos, &format!("{ppath}.protocol"), format!("L7 rules can only apply to TCP (not {proto}) except for DNS rules; set protocol: TCP"));
                }
                if is_dns && pp2.protocols == [Protocol::SCTP] {
                    let pos = pn.get("protocol").map_or(pn.pos, |n| n.pos);
                    ctx.error(
                        pos,
                        &format!("{ppath}.protocol"),
                        "DNS rules can only apply to UDP, TCP or ANY (not SCTP)",
                    );
                }
                if pp2.port == PortSpec::Number(0) {
                    ctx.error(
                        pn.pos,
                        &format!("{ppath}.port"),
                        "L7 rules can not be used when a port is 0 (all ports); name the port",
                    );
                }
                if is_dns && pp2.end_port.is_some() {
                    ctx.error(
                        pn.pos,
                        &format!("{ppath}.endPort"),
                        "DNS rules cannot use a port range (endPort); list each port",
                    );
                }
            }
        }
    }
    let mut server_names = Vec::new();
    if let Some(s) = o.get_some("serverNames") {
        let sp = o.field("serverNames");
        let re = regex::Regex::new(r"^(\*?\*\.)?([-a-zA-Z0-9_]+\.?)+$").ok();
        for (pos, n) in ctx.strings(s, &sp) {
            if n.is_empty() || re.as_ref().is_some_and(|r| !r.is_match(&n)) {
                ctx.error(pos, &sp, format!("invalid server name \"{n}\" in serverNames: expected a DNS name, optionally starting with *. or **."));
            }
            server_names.push(n);
        }
    }
    let terminating_tls = o.get_some("terminatingTLS").map(node_to_json);
    let originating_tls = o.get_some("originatingTLS").map(node_to_json);
    if !server_names.is_empty() && rules.is_some() && terminating_tls.is_none() {
        ctx.error(
            o.key_pos("serverNames"),
            &o.field("serverNames"),
            "serverNames together with L7 rules need terminatingTLS",
        );
    }
    let mut listener = None;
    if let Some(l) = o.get_some("listener") {
        let lp = o.field("listener");
        if el.dir == Direction::Ingress {
            ctx.error(
                o.key_pos("listener"),
                &lp,
                "listener is only allowed on egress",
            );
        }
        if rules.is_some() {
            ctx.error(
                o.key_pos("listener"),
                &lp,
                "listener cannot be combined with L7 rules",
            );
        }
        if let Some(lo) = ctx.object(l, &lp, &["envoyConfig", "name", "priority"]) {
            let mut ec_kind = String::new();
            let mut ec_name = String::new();
            if let Some(ec) = lo.get_some("envoyConfig")
                && let Some(eo) = ctx.object(ec, &lo.field("envoyConfig"), &["kind", "name"])
            {
                ec_kind = eo
                    .get_some("kind")
                    .and_then(|v| ctx.string(v, &eo.field("kind")))
                    .unwrap_or_default();
                ec_name = eo
                    .get_some("name")
                    .and_then(|v| ctx.string(v, &eo.field("name")))
                    .unwrap_or_default();
            }
            let name = lo
                .get_some("name")
                .and_then(|v| ctx.string(v, &lo.field("name")))
                .unwrap_or_default();
            let priority = lo
                .get_some("priority")
                .and_then(|v| ctx.integer(v, &lo.field("priority")))
                .unwrap_or(0);
            if !(0..=100).contains(&priority) {
                ctx.error(
                    l.pos,
                    &lo.field("priority"),
                    "listener priority must be 1 to 100",
                );
            }
            listener = Some(Listener {
                envoy_config_kind: ec_kind,
                envoy_config_name: ec_name,
                name,
                priority: priority.clamp(0, 100) as u8,
            });
        }
    }
    Some(PortRule {
        section,
        ports,
        rules,
        server_names,
        listener,
        terminating_tls,
        originating_tls,
    })
}

/// IANA service name syntax (RFC 6335), as Cilium checks named ports.
pub fn is_iana_service_name(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 15 {
        return false;
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' || s.contains("--") {
        return false;
    }
    b.iter().any(|c| c.is_ascii_alphabetic())
}

fn decode_port_protocol(
    ctx: &mut Ctx,
    pn: &Node,
    pp: &str,
    opts: &Options,
) -> Option<PortProtocol> {
    let o = ctx.object(pn, pp, &["port", "endPort", "protocol"])?;
    let protocols = match o.get_some("protocol") {
        None => vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP],
        Some(n) => {
            let s = ctx.string(n, &o.field("protocol"))?;
            match s.to_ascii_uppercase().as_str() {
                "ANY" | "" => vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP],
                "TCP" => vec![Protocol::TCP],
                "UDP" => vec![Protocol::UDP],
                "SCTP" => vec![Protocol::SCTP],
                p @ ("VRRP" | "IGMP") => {
                    if !opts.enable_extended_ip_protocols {
                        ctx.error(n.pos, &o.field("protocol"), format!("protocol {p} requires the agent option enable-extended-ip-protocols (off by default); turn it on in Palisade's configuration (VRRP and IGMP rules then take no port)"));
                        return None;
                    }
                    vec![Protocol::parse(p)?]
                }
                "ICMP" | "ICMPV6" => {
                    ctx.error(n.pos, &o.field("protocol"), format!("{s} is not a port protocol; use an icmps block with fields [{{type: 8}}] instead"));
                    return None;
                }
                _ => {
                    ctx.error(
                        n.pos,
                        &o.field("protocol"),
                        format!("unknown protocol \"{s}\"; valid: TCP, UDP, SCTP, ANY"),
                    );
                    return None;
                }
            }
        }
    };
    let extended = protocols
        .iter()
        .any(|p| matches!(p, Protocol::VRRP | Protocol::IGMP));
    let port = match o.get_some("port") {
        None => {
            if opts.enable_extended_ip_protocols {
                PortSpec::Number(0)
            } else {
                ctx.error(pn.pos, &o.field("port"), "port must be specified (a number 0-65535 as a string, \"0\" for all ports, or a named port)");
                return None;
            }
        }
        Some(n) => {
            let s = match &n.value {
                Value::Str(s) => s.clone(),
                Value::Int(i) => {
                    ctx.error(
                        n.pos,
                        &o.field("port"),
                        format!("port must be a string, found integer; quote it: port: \"{i}\""),
                    );
                    return None;
                }
                _ => {
                    ctx.error(
                        n.pos,
                        &o.field("port"),
                        format!("port must be a string, found {}", n.type_name()),
                    );
                    return None;
                }
            };
            if s.is_empty() {
                if !opts.enable_extended_ip_protocols {
                    ctx.error(n.pos, &o.field("port"), "port must be specified (a number 0-65535 as a string, \"0\" for all ports, or a named port)");
                    return None;
                }
                PortSpec::Number(0)
            } else if s.bytes().all(|b| b.is_ascii_digit()) {
                if s.len() > 1 && s.starts_with('0') {
                    // Cilium parses ports with Go's base prefixes: "010" is
                    // port 8 there, "080" an error. Neither is what was meant.
                    ctx.error(
                        n.pos,
                        &o.field("port"),
                        format!(
                            "port \"{s}\" has a leading zero, which Cilium reads as an octal number; write the port without it"
                        ),
                    );
                    return None;
                }
                match s.parse::<u32>() {
                    Ok(v) if v <= 65535 => PortSpec::Number(v as u16),
                    _ => {
                        ctx.error(
                            n.pos,
                            &o.field("port"),
                            format!("port \"{s}\" is out of range; valid ports are 0 to 65535"),
                        );
                        return None;
                    }
                }
            } else if is_iana_service_name(&s) {
                PortSpec::Named(s.to_ascii_lowercase())
            } else {
                ctx.error(n.pos, &o.field("port"), format!("port \"{s}\" is neither a number 0-65535 nor a valid port name (1-15 letters, digits and dashes, with at least one letter)"));
                return None;
            }
        }
    };
    if extended && port != PortSpec::Number(0) {
        ctx.error(
            pn.pos,
            &o.field("port"),
            "VRRP and IGMP rules cannot name a port",
        );
        return None;
    }
    let end_port = match o.get_some("endPort") {
        None => None,
        Some(n) => {
            let v = ctx.integer(n, &o.field("endPort"))?;
            if !(0..=65535).contains(&v) {
                ctx.error(n.pos, &o.field("endPort"), "endPort must be 0 to 65535");
                return None;
            }
            match port {
                PortSpec::Number(p) if (v as u16) > p => Some(v as u16),
                _ => None,
            }
        }
    };
    Some(PortProtocol {
        port,
        end_port,
        protocols,
    })
}

fn decode_l7(ctx: &mut Ctx, r: &Node, rp: &str) -> Option<L7Rules> {
    let o = ctx.object(r, rp, &["http", "kafka", "dns", "l7proto", "l7"])?;
    let kinds: Vec<&str> = ["http", "kafka", "dns"]
        .into_iter()
        .filter(|f| o.get_some(f).is_some())
        .collect();
    let generic = o.has("l7proto") || o.has("l7");
    if kinds.len() + usize::from(generic) > 1 {
        ctx.error(
            r.pos,
            rp,
            "only one L7 rule type (http, kafka, dns or l7proto/l7) may appear per port rule",
        );
        return None;
    }
    if let Some(h) = o.get_some("http") {
        let rules = ctx.list(h, &o.field("http"), decode_http_rule)?;
        return Some(L7Rules::Http(rules.into()));
    }
    if let Some(k) = o.get_some("kafka") {
        let rules = ctx.list(k, &o.field("kafka"), decode_kafka_rule)?;
        return Some(L7Rules::Kafka(rules));
    }
    if let Some(d) = o.get_some("dns") {
        let rules = ctx.list(d, &o.field("dns"), |ctx, item, ip| {
            let s = decode_fqdn(ctx, item, ip)?;
            Some(DnsRule {
                match_name: s.match_name,
                match_pattern: s.match_pattern,
                matcher: s.matcher,
            })
        })?;
        return Some(L7Rules::Dns(rules));
    }
    if generic {
        let Some(p) = o.get_some("l7proto") else {
            ctx.error(
                o.key_pos("l7"),
                &o.field("l7"),
                "l7 rules need l7proto (the parser name)",
            );
            return None;
        };
        let l7proto = ctx.string(p, &o.field("l7proto"))?;
        let mut l7 = Vec::new();
        if let Some(list) = o.get_some("l7") {
            let lp = o.field("l7");
            for (i, item) in ctx.seq(list, &lp)?.iter().enumerate() {
                let ip = index(&lp, i);
                let mut m = BTreeMap::new();
                for (pos, k, v) in ctx.string_map(item, &ip) {
                    if k.is_empty() {
                        ctx.error(pos, &ip, "an l7 rule key must not be empty");
                    }
                    m.insert(k, v);
                }
                l7.push(m);
            }
        }
        return Some(L7Rules::Generic { l7proto, l7 });
    }
    // `rules: {}`: no L7 rules at all.
    None
}

fn decode_regex(ctx: &mut Ctx, o: &Obj, field: &str) -> Option<Option<FullRegex>> {
    match o.get_some(field) {
        None => Some(None),
        Some(n) => {
            let s = ctx.string(n, &o.field(field))?;
            if s.is_empty() {
                return Some(None);
            }
            match FullRegex::new(&s) {
                Ok(r) => Some(Some(r)),
                Err(e) => {
                    ctx.error(n.pos, &o.field(field), e);
                    None
                }
            }
        }
    }
}

fn decode_http_rule(ctx: &mut Ctx, item: &Node, ip: &str) -> Option<HttpRule> {
    let o = ctx.object(
        item,
        ip,
        &["method", "path", "host", "headers", "headerMatches"],
    )?;
    let method = decode_regex(ctx, &o, "method");
    let path = decode_regex(ctx, &o, "path");
    let host = decode_regex(ctx, &o, "host");
    let mut headers = Vec::new();
    if let Some(h) = o.get_some("headers") {
        let hp = o.field("headers");
        for (pos, s) in ctx.strings(h, &hp) {
            let (name, value) = match s.split_once(':') {
                Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                None => (s.trim().to_string(), None),
            };
            if name.is_empty() {
                ctx.error(
                    pos,
                    &hp,
                    "a header rule needs a header name (\"Name\" or \"Name: value\")",
                );
            }
            headers.push(HeaderMatch {
                name,
                value,
                mismatch: None,
                secret: false,
            });
        }
    }
    let mut header_matches = Vec::new();
    if let Some(h) = o.get_some("headerMatches") {
        let hp = o.field("headerMatches");
        if let Some(items) = ctx.seq(h, &hp) {
            for (i, hm) in items.iter().enumerate() {
                let mp = index(&hp, i);
                let Some(mo) = ctx.object(hm, &mp, &["name", "value", "secret", "mismatch"]) else {
                    continue;
                };
                let name = mo
                    .get_some("name")
                    .and_then(|v| ctx.string(v, &mo.field("name")))
                    .unwrap_or_default();
                if name.is_empty() {
                    ctx.error(hm.pos, &mo.field("name"), "headerMatches.name is required");
                }
                let value = mo
                    .get_some("value")
                    .and_then(|v| ctx.string(v, &mo.field("value")));
                let secret = mo.has("secret");
                if let Some(s) = mo.get_some("secret") {
                    let _ = ctx.object(s, &mo.field("secret"), &["namespace", "name"]);
                }
                let mismatch = match mo.get_some("mismatch") {
                    None => None,
                    Some(m) => {
                        let s = ctx.string(m, &mo.field("mismatch")).unwrap_or_default();
                        if s.is_empty() {
                            None
                        } else {
                            match MismatchAction::parse(&s) {
                                Some(a) => Some(a),
                                None => {
                                    ctx.error(m.pos, &mo.field("mismatch"), format!("unknown mismatch action \"{s}\"; valid: LOG, ADD, DELETE, REPLACE"));
                                    None
                                }
                            }
                        }
                    }
                };
                header_matches.push(HeaderMatch {
                    name,
                    value,
                    mismatch,
                    secret,
                });
            }
        }
    }
    Some(HttpRule {
        method: method?,
        path: path?,
        host: host?,
        headers,
        header_matches,
    })
}

fn decode_kafka_rule(ctx: &mut Ctx, item: &Node, ip: &str) -> Option<KafkaRule> {
    let o = ctx.object(
        item,
        ip,
        &["role", "apiKey", "apiVersion", "clientID", "topic"],
    )?;
    let mut rule = KafkaRule::default();
    let role = o
        .get_some("role")
        .and_then(|v| ctx.string(v, &o.field("role")))
        .filter(|s| !s.is_empty());
    let api_key = o
        .get_some("apiKey")
        .and_then(|v| ctx.string(v, &o.field("apiKey")))
        .filter(|s| !s.is_empty());
    if role.is_some() && api_key.is_some() {
        ctx.error(
            o.key_pos("apiKey"),
            &o.field("apiKey"),
            "role and apiKey cannot both be set; a role stands for a set of API keys",
        );
        return None;
    }
    if let Some(r) = &role {
        match kafka_role_keys(&r.to_ascii_lowercase()) {
            Some(keys) => rule.api_keys = keys.to_vec(),
            None => {
                ctx.error(
                    o.get("role").map_or(item.pos, |n| n.pos),
                    &o.field("role"),
                    format!("unknown Kafka role \"{r}\"; valid: produce, consume"),
                );
                return None;
            }
        }
    }
    if let Some(k) = &api_key {
        match kafka_api_key(k) {
            Some(key) => rule.api_keys = vec![key],
            None => {
                ctx.error(o.get("apiKey").map_or(item.pos, |n| n.pos), &o.field("apiKey"), format!("unknown Kafka apiKey \"{k}\"; use a name such as produce, fetch, metadata, offsetcommit, heartbeat"));
                return None;
            }
        }
    }
    rule.role = role;
    rule.api_key = api_key;
    if let Some(v) = o.get_some("apiVersion") {
        let s = match &v.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => {
                ctx.error(
                    v.pos,
                    &o.field("apiVersion"),
                    "apiVersion must be a number as a string",
                );
                return None;
            }
        };
        if !s.is_empty() {
            match s.parse::<i16>() {
                Ok(n) if n >= 0 => rule.api_version = Some(n),
                _ => {
                    ctx.error(
                        v.pos,
                        &o.field("apiVersion"),
                        format!("invalid Kafka apiVersion \"{s}\": expected a non-negative number"),
                    );
                    return None;
                }
            }
        }
    }
    rule.client_id = o
        .get_some("clientID")
        .and_then(|v| ctx.string(v, &o.field("clientID")))
        .filter(|s| !s.is_empty());
    if let Some(t) = o.get_some("topic") {
        let s = ctx.string(t, &o.field("topic"))?;
        if s.len() > 255
            || s.bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            ctx.error(
                t.pos,
                &o.field("topic"),
                format!(
                    "invalid Kafka topic \"{s}\": at most 255 letters, digits, '.', '_' and '-'"
                ),
            );
            return None;
        }
        if !s.is_empty() {
            rule.topic = Some(s);
        }
    }
    Some(rule)
}

/// Decodes a label selector (matchLabels, matchExpressions) with Kubernetes'
/// label syntax checks.
pub fn decode_selector(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Selector> {
    let o = ctx.object(node, path, &["matchLabels", "matchExpressions"])?;
    let before = ctx.errors.len();
    let mut reqs = Vec::new();
    if let Some(ml) = o.get_some("matchLabels") {
        let mp = o.field("matchLabels");
        for (pos, k, v) in ctx.string_map(ml, &mp) {
            check_label_key(ctx, pos, &join(&mp, &k), &k);
            check_label_value(ctx, pos, &join(&mp, &k), &v);
            reqs.push(Requirement::equals(LabelKey::parse(&k, SOURCE_ANY), &v));
        }
    }
    if let Some(me) = o.get_some("matchExpressions") {
        let ep = o.field("matchExpressions");
        if let Some(items) = ctx.seq(me, &ep) {
            for (i, item) in items.iter().enumerate() {
                let ip = index(&ep, i);
                let Some(eo) = ctx.object(item, &ip, &["key", "operator", "values"]) else {
                    continue;
                };
                let Some(key) = eo
                    .get_some("key")
                    .and_then(|v| ctx.string(v, &eo.field("key")))
                else {
                    ctx.error(item.pos, &eo.field("key"), "a match expression needs a key");
                    continue;
                };
                check_label_key(ctx, item.pos, &eo.field("key"), &key);
                let Some(opn) = eo.get_some("operator") else {
                    ctx.error(
                        item.pos,
                        &eo.field("operator"),
                        "a match expression needs an operator: In, NotIn, Exists or DoesNotExist",
                    );
                    continue;
                };
                let Some(ops) = ctx.string(opn, &eo.field("operator")) else {
                    continue;
                };
                let Some(op) = Operator::parse(&ops) else {
                    ctx.error(
                        opn.pos,
                        &eo.field("operator"),
                        format!(
                            "unknown operator \"{ops}\"; valid: In, NotIn, Exists, DoesNotExist"
                        ),
                    );
                    continue;
                };
                let values: BTreeSet<String> = eo
                    .get_some("values")
                    .map(|v| ctx.strings(v, &eo.field("values")))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect();
                match op {
                    Operator::In | Operator::NotIn if values.is_empty() => ctx.error(
                        item.pos,
                        &eo.field("values"),
                        format!("operator {ops} needs at least one entry in values"),
                    ),
                    Operator::Exists | Operator::DoesNotExist if !values.is_empty() => ctx.error(
                        item.pos,
                        &eo.field("values"),
                        format!("operator {ops} takes no values"),
                    ),
                    _ => {}
                }
                for v in &values {
                    check_label_value(ctx, item.pos, &eo.field("values"), v);
                }
                reqs.push(Requirement {
                    key: LabelKey::parse(&key, SOURCE_ANY),
                    op,
                    values,
                });
            }
        }
    }
    (ctx.errors.len() == before).then(|| Selector::new(reqs))
}

fn check_label_key(ctx: &mut Ctx, pos: Pos, field: &str, key: &str) {
    let bare = match key.split_once(':') {
        Some((src, rest)) if crate::labels::KNOWN_SOURCES.contains(&src) => rest,
        _ => key,
    };
    let (prefix, name) = match bare.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, bare),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .as_bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    });
    // Reserved labels (reserved:init, reserved:host) have empty values and plain names.
    if !(name_ok && prefix_ok) {
        ctx.error(pos, field, format!("invalid label selector: key \"{key}\" must be an optional DNS prefix and '/', then a name of at most 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit"));
    }
}

fn check_label_value(ctx: &mut Ctx, pos: Pos, field: &str, v: &str) {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()
                .first()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && v.as_bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric()));
    if !ok {
        ctx.error(pos, field, format!("invalid label selector: value \"{v}\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"));
    }
}

/// A node as JSON (for opaque sub-objects such as TLS contexts).
pub fn node_to_json(n: &Node) -> serde_json::Value {
    match &n.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Str(s) => s.clone().into(),
        Value::Seq(items) => items.iter().map(node_to_json).collect(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.name.clone(), node_to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

// ---------------------------------------------------------------- NetworkPolicy

fn decode_network_policy(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = ctx.object(
        doc,
        path,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    check_api_version(ctx, &o, "NetworkPolicy", &["networking.k8s.io/v1"]);
    let meta = decode_meta(ctx, &o, true);
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(spec) = o.get_some("spec") else {
        ctx.error(
            doc.pos,
            &o.field("spec"),
            "NetworkPolicy needs a spec with podSelector",
        );
        return None;
    };
    let sp = o.field("spec");
    let so = ctx.object(
        spec,
        &sp,
        &["podSelector", "policyTypes", "ingress", "egress"],
    )?;
    let pod_selector = match so.get("podSelector") {
        Some(ps) => decode_selector(ctx, ps, &so.field("podSelector"))?,
        None => {
            ctx.error(
                spec.pos,
                &so.field("podSelector"),
                "podSelector is required (podSelector: {} selects every pod of the namespace)",
            );
            return None;
        }
    };
    let mut types = Vec::new();
    if let Some(pt) = so.get_some("policyTypes") {
        for (pos, t) in ctx.strings(pt, &so.field("policyTypes")) {
            match t.as_str() {
                "Ingress" | "Egress" => types.push(t),
                _ => ctx.error(
                    pos,
                    &so.field("policyTypes"),
                    format!("unknown policy type \"{t}\" in policyTypes; valid: Ingress, Egress"),
                ),
            }
        }
    }
    let has_egress_rules = so.get_some("egress").is_some();
    if types.is_empty() {
        types.push("Ingress".into());
        if has_egress_rules {
            types.push("Egress".into());
        }
    }
    let ingress_on = types.iter().any(|t| t == "Ingress");
    let egress_on = types.iter().any(|t| t == "Egress");
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    for (field, dir, peer_field, on) in [
        ("ingress", Direction::Ingress, "from", ingress_on),
        ("egress", Direction::Egress, "to", egress_on),
    ] {
        let Some(list) = so.get_some(field) else {
            continue;
        };
        let fp = so.field(field);
        let Some(items) = ctx.seq(list, &fp) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = index(&fp, i);
            let Some(ro) = ctx.object(item, &ip, &[peer_field, "ports"]) else {
                continue;
            };
            let section = format!("{field}[{i}]");
            let ports = match ro.get_some("ports") {
                None => vec![],
                Some(p) => decode_knp_ports(ctx, p, &ro.field("ports"), &section),
            };
            let peer_nodes = match ro.get_some(peer_field) {
                None => vec![],
                Some(pn) => ctx
                    .seq(pn, &ro.field(peer_field))
                    .map(|s| s.to_vec())
                    .unwrap_or_default(),
            };
            let mut elems = Vec::new();
            if peer_nodes.is_empty() {
                elems.push(PeerRule {
                    section: section.clone(),
                    deny: false,
                    peers: Peers::All,
                    to_ports: ports.clone(),
                    icmps: vec![],
                    authentication: None,
                });
            }
            for (j, peer) in peer_nodes.iter().enumerate() {
                let pp = index(&ro.field(peer_field), j);
                if let Some(peers) = decode_knp_peer(ctx, peer, &pp, &namespace) {
                    elems.push(PeerRule {
                        section: section.clone(),
                        deny: false,
                        peers,
                        to_ports: ports.clone(),
                        icmps: vec![],
                        authentication: None,
                    });
                }
            }
            if on {
                match dir {
                    Direction::Ingress => ingress.extend(elems),
                    Direction::Egress => egress.extend(elems),
                }
            }
        }
    }
    let mut subject = pod_selector;
    subject = subject.with(Requirement::equals(
        LabelKey::new("k8s", crate::labels::POD_NAMESPACE),
        &namespace,
    ));
    Some(Object::Policy(Policy {
        id: PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace),
            name: meta.name,
        },
        annotations: meta.annotations,
        rules: vec![Rule {
            section: "spec".into(),
            subject: Subject::EndpointSelector(subject),
            ingress,
            egress,
            default_deny: DefaultDeny {
                ingress: ingress_on.then_some(true),
                egress: egress_on.then_some(true),
            },
            description: None,
            labels: vec![],
            log: None,
        }],
        file: ctx.file.to_string(),
        pos: doc.pos,
    }))
}

fn decode_knp_ports(ctx: &mut Ctx, p: &Node, pp: &str, section: &str) -> Vec<PortRule> {
    let mut ports = Vec::new();
    let Some(items) = ctx.seq(p, pp) else {
        return vec![];
    };
    for (i, item) in items.iter().enumerate() {
        let ip = index(pp, i);
        let Some(o) = ctx.object(item, &ip, &["port", "endPort", "protocol"]) else {
            continue;
        };
        let protocol = match o.get_some("protocol") {
            None => Protocol::TCP,
            Some(n) => match ctx.string(n, &o.field("protocol")).as_deref() {
                Some("TCP") => Protocol::TCP,
                Some("UDP") => Protocol::UDP,
                Some("SCTP") => Protocol::SCTP,
                Some(other) => {
                    ctx.error(
                        n.pos,
                        &o.field("protocol"),
                        format!("unsupported protocol \"{other}\"; valid: TCP, UDP, SCTP"),
                    );
                    continue;
                }
                None => continue,
            },
        };
        let port = match o.get_some("port") {
            None => PortSpec::Number(0),
            Some(n) => match &n.value {
                Value::Int(i) if (1..=65535).contains(i) => PortSpec::Number(*i as u16),
                Value::Int(i) => {
                    ctx.error(
                        n.pos,
                        &o.field("port"),
                        format!("port {i} is out of range; valid ports are 1 to 65535"),
                    );
                    continue;
                }
                Value::Str(s) if is_iana_service_name(s) => PortSpec::Named(s.to_ascii_lowercase()),
                Value::Str(s) => {
                    ctx.error(n.pos, &o.field("port"), format!("port \"{s}\" is not a valid port name (1-15 lowercase letters, digits and dashes)"));
                    continue;
                }
                _ => {
                    ctx.error(
                        n.pos,
                        &o.field("port"),
                        format!(
                            "port must be a number or a port name, found {}",
                            n.type_name()
                        ),
                    );
                    continue;
                }
            },
        };
        let end_port = match o.get_some("endPort") {
            None => None,
            Some(n) => {
                let Some(v) = ctx.integer(n, &o.field("endPort")) else {
                    continue;
                };
                match port {
                    PortSpec::Number(p) if p > 0 && v >= i64::from(p) && v <= 65535 => {
                        (v > i64::from(p)).then_some(v as u16)
                    }
                    PortSpec::Number(_) => {
                        ctx.error(
                            n.pos,
                            &o.field("endPort"),
                            "endPort must be at least port and at most 65535",
                        );
                        continue;
                    }
                    PortSpec::Named(_) => {
                        ctx.error(
                            n.pos,
                            &o.field("endPort"),
                            "endPort cannot be used with a named port",
                        );
                        continue;
                    }
                }
            }
        };
        ports.push(PortRule {
            section: format!("{section}.ports[{i}]"),
            ports: vec![PortProtocol {
                port,
                end_port,
                protocols: vec![protocol],
            }],
            rules: None,
            server_names: vec![],
            listener: None,
            terminating_tls: None,
            originating_tls: None,
        });
    }
    ports
}

fn decode_knp_peer(ctx: &mut Ctx, peer: &Node, pp: &str, namespace: &str) -> Option<Peers> {
    let o = ctx.object(peer, pp, &["podSelector", "namespaceSelector", "ipBlock"])?;
    if let Some(ib) = o.get_some("ipBlock") {
        if o.has("podSelector") || o.has("namespaceSelector") {
            ctx.error(
                o.key_pos("ipBlock"),
                &o.field("ipBlock"),
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            );
            return None;
        }
        let r = decode_cidr_rule(ctx, ib, &o.field("ipBlock"))?;
        return Some(Peers::CidrSet(vec![r]));
    }
    let pod = match o.get("podSelector") {
        Some(n) if !n.is_null() => Some(decode_selector(ctx, n, &o.field("podSelector"))?),
        _ => None,
    };
    let ns = match o.get("namespaceSelector") {
        Some(n) if !n.is_null() => Some(decode_selector(ctx, n, &o.field("namespaceSelector"))?),
        _ => None,
    };
    if pod.is_none() && ns.is_none() {
        ctx.error(
            peer.pos,
            pp,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        );
        return None;
    }
    let mut reqs = pod.map(|p| p.requirements).unwrap_or_default();
    // Pod labels of a NetworkPolicy peer come from Kubernetes.
    for r in &mut reqs {
        if r.key.source == SOURCE_ANY {
            r.key.source = "k8s".into();
        }
    }
    match ns {
        None => reqs.push(Requirement::equals(
            LabelKey::new("k8s", crate::labels::POD_NAMESPACE),
            namespace,
        )),
        Some(nsel) if nsel.is_empty() => reqs.push(Requirement::exists(LabelKey::new(
            "k8s",
            crate::labels::POD_NAMESPACE,
        ))),
        Some(nsel) => {
            for r in nsel.requirements {
                reqs.push(Requirement {
                    key: LabelKey::new(
                        "k8s",
                        &format!("{}{}", crate::labels::NAMESPACE_LABELS_PREFIX, r.key.key),
                    ),
                    op: r.op,
                    values: r.values,
                });
            }
            reqs.push(Requirement::exists(LabelKey::new(
                "k8s",
                crate::labels::POD_NAMESPACE,
            )));
        }
    }
    Some(Peers::Endpoints(vec![Selector::new(reqs)]))
}

// ---------------------------------------------------------------- cluster state

fn lenient<'n>(ctx: &mut Ctx, node: &'n Node, path: &str) -> Option<Obj<'n>> {
    // Cluster objects carry many fields Palisade does not read (images,
    // resources, probes...): unknown fields are allowed there.
    let Value::Map(entries) = &node.value else {
        ctx.error(
            node.pos,
            path,
            format!("expected an object, found {}", node.type_name()),
        );
        return None;
    };
    let names: Vec<&str> = entries.iter().map(|(k, _)| k.name.as_str()).collect();
    ctx.object(node, path, &names)
}

fn decode_namespace(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = lenient(ctx, doc, path)?;
    check_api_version(ctx, &o, "Namespace", &["v1"]);
    let meta = decode_meta(ctx, &o, true);
    let mut labels = meta.labels;
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| meta.name.clone());
    Some(Object::Namespace(Namespace {
        name: meta.name,
        labels,
    }))
}

fn parse_ip(ctx: &mut Ctx, n: &Node, path: &str) -> Option<IpAddr> {
    let s = ctx.string(n, path)?;
    match s.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            ctx.error(n.pos, path, format!("\"{s}\" is not an IP address"));
            None
        }
    }
}

fn decode_pod(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = lenient(ctx, doc, path)?;
    check_api_version(ctx, &o, "Pod", &["v1"]);
    let meta = decode_meta(ctx, &o, true);
    let mut pod = Pod {
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        name: meta.name,
        labels: meta.labels,
        service_account: "default".into(),
        node_name: None,
        ports: vec![],
        ips: vec![],
        host_network: false,
    };
    if let Some(spec) = o.get_some("spec") {
        let sp = o.field("spec");
        let so = lenient(ctx, spec, &sp)?;
        if let Some(n) = so.get_some("nodeName") {
            pod.node_name = ctx.string(n, &so.field("nodeName"));
        }
        if let Some(n) = so
            .get_some("serviceAccountName")
            .or_else(|| so.get_some("serviceAccount"))
            && let Some(s) = ctx.string(n, &so.field("serviceAccountName"))
        {
            pod.service_account = s;
        }
        if let Some(n) = so.get_some("hostNetwork") {
            pod.host_network = ctx.boolean(n, &so.field("hostNetwork")).unwrap_or(false);
        }
        if let Some(cs) = so.get_some("containers") {
            let cp = so.field("containers");
            for (i, c) in ctx.seq(cs, &cp).unwrap_or(&[]).iter().enumerate() {
                let cip = index(&cp, i);
                let Some(co) = lenient(ctx, c, &cip) else {
                    continue;
                };
                let Some(ports) = co.get_some("ports") else {
                    continue;
                };
                let pp = co.field("ports");
                for (j, p) in ctx.seq(ports, &pp).unwrap_or(&[]).iter().enumerate() {
                    let ppi = index(&pp, j);
                    let Some(po) = lenient(ctx, p, &ppi) else {
                        continue;
                    };
                    let Some(cport) = po
                        .get_some("containerPort")
                        .and_then(|n| ctx.integer(n, &po.field("containerPort")))
                    else {
                        ctx.error(
                            p.pos,
                            &po.field("containerPort"),
                            "containerPort is required",
                        );
                        continue;
                    };
                    let protocol = po
                        .get_some("protocol")
                        .and_then(|n| ctx.string(n, &po.field("protocol")))
                        .and_then(|s| Protocol::parse(&s))
                        .unwrap_or(Protocol::TCP);
                    let name = po
                        .get_some("name")
                        .and_then(|n| ctx.string(n, &po.field("name")));
                    if let Ok(port) = u16::try_from(cport) {
                        pod.ports.push(ContainerPort {
                            name,
                            port,
                            protocol,
                        });
                    } else {
                        ctx.error(
                            p.pos,
                            &po.field("containerPort"),
                            "containerPort must be 1 to 65535",
                        );
                    }
                }
            }
        }
    }
    if let Some(st) = o.get_some("status") {
        let sp = o.field("status");
        let so = lenient(ctx, st, &sp)?;
        if let Some(ip) = so
            .get_some("podIP")
            .and_then(|n| parse_ip(ctx, n, &so.field("podIP")))
        {
            pod.ips.push(ip);
        }
        if let Some(ips) = so.get_some("podIPs") {
            let ip_path = so.field("podIPs");
            for (i, e) in ctx.seq(ips, &ip_path).unwrap_or(&[]).iter().enumerate() {
                let ep = index(&ip_path, i);
                if let Some(eo) = lenient(ctx, e, &ep)
                    && let Some(ip) = eo
                        .get_some("ip")
                        .and_then(|n| parse_ip(ctx, n, &eo.field("ip")))
                    && !pod.ips.contains(&ip)
                {
                    pod.ips.push(ip);
                }
            }
        }
    }
    Some(Object::Pod(pod))
}

fn decode_node(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = lenient(ctx, doc, path)?;
    check_api_version(ctx, &o, "Node", &["v1"]);
    let meta = decode_meta(ctx, &o, true);
    let mut node = ClusterNode {
        name: meta.name,
        labels: meta.labels,
        addresses: vec![],
    };
    if let Some(st) = o.get_some("status")
        && let Some(so) = lenient(ctx, st, &o.field("status"))
        && let Some(addrs) = so.get_some("addresses")
    {
        let ap = so.field("addresses");
        for (i, a) in ctx.seq(addrs, &ap).unwrap_or(&[]).iter().enumerate() {
            let aip = index(&ap, i);
            let Some(ao) = lenient(ctx, a, &aip) else {
                continue;
            };
            let ty = ao
                .get_some("type")
                .and_then(|n| ctx.string(n, &ao.field("type")));
            if matches!(ty.as_deref(), Some("InternalIP") | Some("ExternalIP"))
                && let Some(ip) = ao
                    .get_some("address")
                    .and_then(|n| parse_ip(ctx, n, &ao.field("address")))
            {
                node.addresses.push(ip);
            }
        }
    }
    Some(Object::Node(node))
}

fn decode_service(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = lenient(ctx, doc, path)?;
    check_api_version(ctx, &o, "Service", &["v1"]);
    let meta = decode_meta(ctx, &o, true);
    let mut svc = Service {
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        name: meta.name,
        labels: meta.labels,
        selector: None,
        ports: vec![],
        cluster_ip: None,
    };
    if let Some(spec) = o.get_some("spec") {
        let sp = o.field("spec");
        let so = lenient(ctx, spec, &sp)?;
        if let Some(sel) = so.get_some("selector") {
            svc.selector = Some(
                ctx.string_map(sel, &so.field("selector"))
                    .into_iter()
                    .map(|(_, k, v)| (k, v))
                    .collect(),
            );
        }
        if let Some(ip) = so.get_some("clusterIP")
            && ip.as_str() != Some("None")
        {
            svc.cluster_ip = parse_ip(ctx, ip, &so.field("clusterIP"));
        }
        if let Some(ports) = so.get_some("ports") {
            let pp = so.field("ports");
            for (i, p) in ctx.seq(ports, &pp).unwrap_or(&[]).iter().enumerate() {
                let ppi = index(&pp, i);
                let Some(po) = lenient(ctx, p, &ppi) else {
                    continue;
                };
                let port = po
                    .get_some("port")
                    .and_then(|n| ctx.integer(n, &po.field("port")))
                    .unwrap_or(0);
                let protocol = po
                    .get_some("protocol")
                    .and_then(|n| ctx.string(n, &po.field("protocol")))
                    .and_then(|s| Protocol::parse(&s))
                    .unwrap_or(Protocol::TCP);
                let name = po
                    .get_some("name")
                    .and_then(|n| ctx.string(n, &po.field("name")));
                if let Ok(port) = u16::try_from(port) {
                    svc.ports.push(ServicePort {
                        name,
                        port,
                        protocol,
                    });
                }
            }
        }
    }
    Some(Object::Service(svc))
}

fn decode_cidr_group(ctx: &mut Ctx, doc: &Node, path: &str) -> Option<Object> {
    let o = ctx.object(
        doc,
        path,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    check_api_version(
        ctx,
        &o,
        "CiliumCIDRGroup",
        &["cilium.io/v2", "cilium.io/v2alpha1"],
    );
    let meta = decode_meta(ctx, &o, true);
    let mut cidrs = Vec::new();
    if let Some(spec) = o.get_some("spec") {
        let sp = o.field("spec");
        let so = ctx.object(spec, &sp, &["externalCIDRs"])?;
        if let Some(list) = so.get_some("externalCIDRs") {
            for (pos, s) in ctx.strings(list, &so.field("externalCIDRs")) {
                match Cidr::parse(&s) {
                    Ok(c) => cidrs.push(c),
                    Err(e) => ctx.error(pos, &so.field("externalCIDRs"), e),
                }
            }
        }
    }
    Some(Object::CidrGroup(CidrGroup {
        name: meta.name,
        labels: meta.labels,
        cidrs,
    }))
}

/// Renders a value as YAML (for `policy get`).
pub fn to_yaml(v: &serde_json::Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}
