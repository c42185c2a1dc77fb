#!/usr/bin/python3
"""A Hubble-format reader for Palisade's flow files, built on Google's
protobuf runtime (Debian's python3-protobuf) and the message subset in
proto/ (compiled with Debian's protoc at run time).

Every line must decode as a `flow.GetFlowsResponse` with
`json_format.Parse(..., ignore_unknown_fields=False)`: a field name, enum
value or type the .proto does not declare fails the line. Every decoded
message is then written back with `MessageToJson(preserving_proto_field_name
=True)` and must equal the line it came from (times compared as instants,
since protojson may print fewer fractional digits), so the names Palisade
writes are exactly the proto names and nothing is lost or reinterpreted.

Usage: hubble_reader.py --proto-dir DIR --work-dir DIR FLOWS_FILE
Prints a JSON summary of what was decoded on stdout; exit status 1 if any
line failed.
"""

import argparse
import collections
import importlib
import json
import subprocess
import sys

PROTOS = ["flow.proto", "palisade_explanation.proto"]


def compile_protos(proto_dir, work_dir):
    subprocess.run(
        ["protoc", f"--proto_path={proto_dir}", f"--python_out={work_dir}", *PROTOS],
        check=True,
    )
    sys.path.insert(0, work_dir)
    flow_pb2 = importlib.import_module("flow_pb2")
    # Importing registers palisade.flow.v1.PolicyExplanation in the default
    # pool, so json_format can resolve the Any in Flow.extensions.
    expl_pb2 = importlib.import_module("palisade_explanation_pb2")
    return flow_pb2, expl_pb2


def canonical(value, timestamp_cls, key=None):
    """The JSON value with times as integer nanoseconds."""
    if isinstance(value, dict):
        return {k: canonical(v, timestamp_cls, k) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v, timestamp_cls) for v in value]
    if key == "time" and isinstance(value, str):
        ts = timestamp_cls()
        ts.FromJsonString(value)
        return ts.ToNanoseconds()
    return value


def differences(a, b, path=""):
    """Paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}/{k}: only in the re-encoding ({b[k]!r})")
            elif k not in b:
                out.append(f"{path}/{k}: lost in the re-encoding ({a[k]!r})")
            else:
                out.extend(differences(a[k], b[k], f"{path}/{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(differences(x, y, f"{path}[{i}]"))
        return out
    return [] if a == b else [f"{path}: {a!r} became {b!r}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("flows")
    args = ap.parse_args()

    flow_pb2, expl_pb2 = compile_protos(args.proto_dir, args.work_dir)
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    verdict_name = flow_pb2.Verdict.Name
    type_name = flow_pb2.FlowType.Name
    summary = {
        "lines": 0,
        "decoded": 0,
        "round_tripped": 0,
        "flows": 0,
        "lost_events": 0,
        "kinds": collections.Counter(),
        "l4": collections.Counter(),
        "drop_reasons": collections.Counter(),
        "explanations": 0,
        "default_deny_attributed": 0,
        "rule_attributed_drops": 0,
        "audit_attributed": 0,
        "pods": set(),
    }
    errors = []
    with open(args.flows, encoding="utf-8") as f:
        lines = [(i + 1, l) for i, l in enumerate(f) if l.strip()]
    for n, line in lines:
        summary["lines"] += 1
        msg = flow_pb2.GetFlowsResponse()
        try:
            json_format.Parse(line, msg, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            errors.append(f"line {n}: does not decode: {e}")
            continue
        summary["decoded"] += 1
        again = json.loads(
            json_format.MessageToJson(msg, preserving_proto_field_name=True)
        )
        diff = differences(
            canonical(json.loads(line), Timestamp), canonical(again, Timestamp)
        )
        if diff:
            errors.append(f"line {n}: does not round-trip: " + "; ".join(diff))
        else:
            summary["round_tripped"] += 1

        kind = msg.WhichOneof("response_types")
        if kind == "lost_events":
            summary["lost_events"] += 1
            continue
        if kind != "flow":
            errors.append(f"line {n}: neither a flow nor lost events")
            continue
        fl = msg.flow
        summary["flows"] += 1
        record = fl.l7.WhichOneof("record") if fl.HasField("l7") else None
        label = type_name(fl.Type) + (f" {record}" if record else "")
        summary["kinds"][f"{label} {verdict_name(fl.verdict)}"] += 1
        if fl.HasField("l4"):
            summary["l4"][fl.l4.WhichOneof("protocol") or "none"] += 1
        if fl.drop_reason_desc:
            summary["drop_reasons"][flow_pb2.DropReason.Name(fl.drop_reason_desc)] += 1
        for ep in (fl.source, fl.destination):
            if ep.pod_name:
                summary["pods"].add(f"{ep.namespace}/{ep.pod_name}")
        expl = None
        if fl.HasField("extensions"):
            expl = expl_pb2.PolicyExplanation()
            if not fl.extensions.Unpack(expl):
                errors.append(
                    f"line {n}: extensions is {fl.extensions.type_url}, not PolicyExplanation"
                )
                expl = None
            else:
                summary["explanations"] += 1
        denied_by = list(fl.ingress_denied_by) + list(fl.egress_denied_by)
        rules = list(expl.rules) if expl else []
        if fl.verdict == flow_pb2.DROPPED and denied_by:
            if (
                fl.drop_reason_desc == flow_pb2.POLICY_DENIED
                and fl.policy_match_type == 0
                and any(r.endswith("(default deny)") for r in rules)
            ):
                summary["default_deny_attributed"] += 1
            if any(" spec." in r for r in rules):
                summary["rule_attributed_drops"] += 1
        if fl.verdict == flow_pb2.AUDIT and denied_by and rules:
            summary["audit_attributed"] += 1

    summary["kinds"] = dict(sorted(summary["kinds"].items()))
    summary["l4"] = dict(sorted(summary["l4"].items()))
    summary["drop_reasons"] = dict(sorted(summary["drop_reasons"].items()))
    summary["pods"] = sorted(summary["pods"])
    summary["errors"] = errors
    json.dump(summary, sys.stdout, indent=1)
    print()
    for e in errors[:20]:
        print(e, file=sys.stderr)
    if len(errors) > 20:
        print(f"... and {len(errors) - 20} more", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
