#!/usr/bin/env python3
"""Static tests of terraform/modules/hybrid-gateway and terraform/examples/basic.

Terraform's providers cannot be downloaded on the test machines (no registry access), so
`terraform validate` cannot run; this parses every .tf file with python-hcl2 and asserts the
wiring instead, renders the module's templates and runs `hybrid-gateway check-config` on the
rendered config (the daemon rejects unknown keys, so this proves the key names), and
`bash -n` + shellcheck on the rendered user data. With a terraform binary on PATH the
templates are also rendered by terraform itself (`terraform console`, no providers needed)
and compared with this file's renderer.

    ~/.cache/hybrid-gateway/venv-tools/bin/python terraform/tests/test_terraform.py

Environment: HGW_BIN = hybrid-gateway binary for check-config (default: PATH, then
target/debug, target/release). Last line: "N passed, M failed".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path

import hcl2
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "terraform" / "modules" / "hybrid-gateway"
EXAMPLE = REPO / "terraform" / "examples" / "basic"
IAM_POLICY_JSON = REPO / "packaging" / "iam-policy.json"
RBAC_YAML = REPO / "packaging" / "kubernetes" / "rbac.yaml"

# The action set the AWS issue documents, used only while packaging/iam-policy.json does not
# exist (the JSON is the source of truth once it does).
FALLBACK_ACTIONS = {
    "ec2:DescribeRouteTables", "ec2:DescribeInstances", "ec2:DescribeNetworkInterfaces",
    "ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:DeleteRoute",
    "ec2:ModifyNetworkInterfaceAttribute",
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
}

PASSED = 0
FAILED: list[str] = []


def check(name: str, fn) -> None:
    """Run one assertion function; count it."""
    global PASSED
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        FAILED.append(name)
        print(f"FAIL - {name}: {type(e).__name__}: {e}")
        if os.environ.get("HGW_TEST_VERBOSE"):
            traceback.print_exc()
    else:
        PASSED += 1
        print(f"ok   - {name}")


def skip(name: str, why: str) -> None:
    print(f"skip - {name}: {why}")


# --- HCL helpers ---------------------------------------------------------------------------

def unq(v):
    """python-hcl2 keeps string literals quoted ("\"udp\"") and labels quoted: strip that."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [unq(x) for x in v]
    if isinstance(v, dict):
        return {unq(k): unq(x) for k, x in v.items() if not str(k).startswith("__")}
    return v


def load_dir(d: Path) -> dict[str, dict]:
    return {p.name: hcl2.load(p.open()) for p in sorted(d.glob("*.tf"))}


def blocks(parsed: dict[str, dict], kind: str) -> dict[str, dict]:
    """{'type.name': body} for resource/data, {'name': body} for variable/output/module."""
    out: dict[str, dict] = {}
    for doc in parsed.values():
        for entry in doc.get(kind, []):
            for k1, v1 in entry.items():
                k1 = unq(k1)
                if kind in ("resource", "data"):
                    for k2, body in v1.items():
                        out[f"{k1}.{unq(k2)}"] = body
                else:
                    out[k1] = v1
    return out


def locals_of(parsed: dict[str, dict]) -> dict:
    out = {}
    for doc in parsed.values():
        for entry in doc.get("locals", []):
            out.update({k: v for k, v in entry.items() if not k.startswith("__")})
    return out


def expr(v) -> str:
    """An attribute's expression text without ${ } wrapping."""
    v = unq(v)
    if isinstance(v, str) and v.startswith("${") and v.endswith("}"):
        return v[2:-1]
    return str(v)


def sources_text(d: Path) -> str:
    """All .tf text with comments removed (for reference scans)."""
    text = ""
    for p in sorted(d.glob("*.tf")):
        for line in p.read_text().splitlines():
            text += re.sub(r"\s#.*$|^\s*#.*$", "", line) + "\n"
    return text


MOD = load_dir(MODULE)
EX = load_dir(EXAMPLE)
VARS = blocks(MOD, "variable")
RES = blocks(MOD, "resource")
DATA = blocks(MOD, "data")
LOCALS = locals_of(MOD)
MOD_TEXT = sources_text(MODULE)


def default_of(var: str):
    d = VARS[var][0] if isinstance(VARS[var], list) else VARS[var]
    return unq(d.get("default"))


def var_body(var: str) -> dict:
    v = VARS[var]
    return v[0] if isinstance(v, list) else v


# --- template renderer (the subset of Terraform's template language the module uses) --------

def tf_jsonencode(v) -> str:
    s = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(template: Path, values: dict) -> str:
    def cond(c: str) -> bool:
        c = c.strip()
        if m := re.fullmatch(r"(\w+)\s*!=\s*null", c):
            return values[m[1]] is not None
        if m := re.fullmatch(r'(\w+)\s*!=\s*""', c):
            return values[m[1]] != ""
        if re.fullmatch(r"\w+", c):
            return bool(values[c])
        raise ValueError(f"unsupported condition {c!r}")

    def interp(m: re.Match) -> str:
        e = m[1].strip()
        if mm := re.fullmatch(r"jsonencode\((\w+)\)", e):
            return tf_jsonencode(values[mm[1]])
        if re.fullmatch(r"\w+", e):
            v = values[e]
            return ("true" if v else "false") if isinstance(v, bool) else str(v)
        raise ValueError(f"unsupported interpolation {e!r}")

    out, stack = [], [True]
    for line in template.read_text().splitlines(keepends=True):
        if m := re.fullmatch(r"%\{ if (.+?) ~\}\n?", line):
            stack.append(stack[-1] and cond(m[1]))
            continue
        if re.fullmatch(r"%\{ endif ~\}\n?", line):
            stack.pop()
            continue
        if "%{" in line:
            raise ValueError(f"unsupported directive in {line!r}")
        if stack[-1]:
            out.append(re.sub(r"(?<!\$)\$\{([^}]*)\}", interp, line).replace("$${", "${"))
    return "".join(out)


def terraform_bin() -> str | None:
    return shutil.which("terraform") or shutil.which("tofu")


def hgw_bin() -> str | None:
    if os.environ.get("HGW_BIN"):
        return os.environ["HGW_BIN"]
    for c in (shutil.which("hybrid-gateway"), REPO / "target/debug/hybrid-gateway",
              REPO / "target/release/hybrid-gateway"):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def hcl_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def terraform_render(template: Path, values: dict) -> str:
    args = ", ".join(f"{k} = {hcl_value(v)}" for k, v in values.items())
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
        p = subprocess.run([terraform_bin(), "console"], input=f'templatefile("{template}", {{ {args} }})\n',
                           capture_output=True, text=True, cwd=d, env=env, timeout=120)
    if p.returncode != 0:
        raise AssertionError(p.stderr)
    lines = p.stdout.splitlines(keepends=True)
    assert lines[0].startswith("<<EOT") and lines[-1].strip() == "EOT", p.stdout[:200]
    return "".join(lines[1:-1])


# --- tests -----------------------------------------------------------------------------------

def t_parse_all():
    files = list((REPO / "terraform").rglob("*.tf"))
    assert len(files) >= 8, files
    for f in files:
        hcl2.load(f.open())


def t_every_variable_used():
    unused = [v for v in VARS if not re.search(rf"\bvar\.{re.escape(v)}\b", MOD_TEXT)]
    assert not unused, f"declared but never used: {unused}"


def t_every_variable_described_and_typed():
    bad = [v for v in VARS if not var_body(v).get("description") or not var_body(v).get("type")]
    assert not bad, bad


def t_no_undeclared_variable():
    used = set(re.findall(r"\bvar\.(\w+)", MOD_TEXT))
    assert used <= set(VARS), used - set(VARS)


def t_example_variables_used():
    ex_vars = blocks(EX, "variable")
    text = sources_text(EXAMPLE)
    unused = [v for v in ex_vars if not re.search(rf"\bvar\.{v}\b", text)]
    assert not unused, unused


def t_example_module_call_matches_module():
    mods = blocks(EX, "module")
    call = mods["hybrid_gateway"]
    call = call[0] if isinstance(call, list) else call
    args = {k for k in call if not k.startswith("__")} - {"source", "providers", "depends_on", "count", "for_each"}
    assert args <= set(VARS), f"unknown module arguments: {args - set(VARS)}"
    required = {v for v in VARS if "default" not in var_body(v)}
    assert required <= args, f"required variables not passed: {required - args}"


def validations(var: str) -> list[str]:
    return [unq(v.get("condition")) for v in var_body(var).get("validation", [])]


def t_cidr_variables_validated():
    for v in ("vpc_cidrs", "hybrid_pod_cidrs", "remote_node_cidrs", "metrics_ingress_cidrs"):
        conds = " ".join(validations(v))
        assert "cidrhost(" in conds and "can(" in conds, f"{v}: no can(cidrhost(...)) validation"


def t_count_variables_validated():
    assert any("length(var.subnet_ids) >= 2" in c for c in validations("subnet_ids")), validations("subnet_ids")
    assert any("var.gateway_count >= 2" in c for c in validations("gateway_count")), validations("gateway_count")
    assert any("length(var.vpc_cidrs) <= 8" in c for c in validations("vpc_cidrs"))
    assert any("length(var.remote_node_cidrs) >= 1" in c for c in validations("remote_node_cidrs"))


def t_every_validation_references_its_variable():
    for v in VARS:
        for c in validations(v):
            assert f"var.{v}" in c, f"{v}: validation does not reference var.{v}: {c}"


def documented_policy() -> dict[str, dict]:
    if not IAM_POLICY_JSON.exists():
        return {}
    doc = json.loads(IAM_POLICY_JSON.read_text())
    out = {}
    for st in doc["Statement"]:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        out[st["Sid"]] = {"actions": set(acts), "condition": st.get("Condition", {})}
    return out


def module_policy_statements() -> dict[str, dict]:
    pd = DATA["aws_iam_policy_document.daemon"]
    stmts = list(pd.get("statement", []))
    for dyn in pd.get("dynamic", []):
        for label, body in dyn.items():
            assert unq(label) == "statement"
            stmts.extend(body["content"])
    out = {}
    for s in stmts:
        s = unq(s)
        out[s["sid"]] = s
    return out


def resolve(s: str) -> str:
    # The derived default tag: hybrid-gateway.io/managed=<cluster_name>.
    assert unq(LOCALS["route_table_tag"]).count("hybrid-gateway.io/managed=${var.cluster_name}") == 1, LOCALS["route_table_tag"]
    tag_key = "hybrid-gateway.io/managed"
    return (s.replace("${local.route_table_tag_key}", tag_key)
             .replace("${local.gateway_eni_tag_key}", unq(LOCALS["gateway_eni_tag_key"])))


def t_iam_actions_exactly_documented():
    stmts = module_policy_statements()
    actions = {a for s in stmts.values() for a in s["actions"]}
    doc = documented_policy()
    want = {a for s in doc.values() for a in s["actions"]} if doc else FALLBACK_ACTIONS
    assert actions == want, f"module {sorted(actions)} != documented {sorted(want)}"


def t_iam_statements_match_json_by_sid():
    doc = documented_policy()
    if not doc:
        skip("IAM statements by Sid", "packaging/iam-policy.json does not exist yet")
        return
    stmts = module_policy_statements()
    assert set(stmts) == set(doc), f"Sids: module {sorted(stmts)} vs json {sorted(doc)}"
    for sid, s in stmts.items():
        assert set(s["actions"]) == doc[sid]["actions"], sid
        want_conds = {(test, var) for test, kv in doc[sid]["condition"].items() for var in kv}
        have_conds = {(c["test"], resolve(c["variable"])) for c in s.get("condition", [])}
        assert have_conds == want_conds, f"{sid}: conditions {have_conds} != {want_conds}"


def t_iam_no_eks_describe_cluster():
    stmts = module_policy_statements()
    assert not any(a.startswith("eks:") for s in stmts.values() for a in s["actions"])
    ud = (MODULE / "templates" / "user_data.sh.tftpl").read_text()
    assert "aws eks" not in ud and "describe-cluster" not in ud, "user data calls EKS: grant eks:DescribeCluster"


def t_iam_route_writes_scoped():
    stmts = module_policy_statements()
    for sid in ("WriteRoutesInTablesTaggedManaged", "WriteRoutesInListedTables"):
        res = stmts[sid]["resources"]
        for r in res if isinstance(res, list) else [res]:
            assert ":route-table/" in r, (sid, r)
    assert stmts["WriteRoutesInTablesTaggedManaged"]["condition"][0]["variable"].startswith("ec2:ResourceTag/")
    listed = stmts["WriteRoutesInListedTables"]["resources"]
    assert isinstance(listed, str) and re.search(r"for (\w+) in var\.route_table_ids .*route-table/\$\{\1\}", listed), listed
    for sid, s in stmts.items():
        if sid != "DescribeRouteTablesInstancesAndEnis":
            assert s["resources"] != ["*"], f"{sid} on *"


def t_iam_dynamodb_lock_table_only():
    s = module_policy_statements()["LeaderLockItemOnly"]
    assert all(a.startswith("dynamodb:") for a in s["actions"])
    (r,) = s["resources"]
    assert "aws_dynamodb_table.lock" in r and "local.lock_table_arn" in r, r
    assert ":table/${local.lock_table_name}" in unq(LOCALS["lock_table_arn"])
    (c,) = s["condition"]
    assert c["test"] == "ForAllValues:StringLike" and c["variable"] == "dynamodb:LeadingKeys", c
    # The configured key only, plus "<key>-<az>" per shard in per-AZ mode.
    want = '${var.election_mode == "per-az" ? [local.lock_key, "${local.lock_key}-*"] : [local.lock_key]}'
    assert c["values"] == want, c


def t_eni_tagged_for_source_dest_permission():
    lt = RES["aws_launch_template.this"]
    key = unq(LOCALS["gateway_eni_tag_key"])
    eni = [t for t in lt["tag_specifications"] if unq(t["resource_type"]) == "network-interface"]
    assert eni and "(local.gateway_eni_tag_key) = \"true\"" in unq(eni[0]["tags"]).replace("'", '"'), eni
    assert key == "hybrid-gateway.io/gateway"


def t_role_and_instance_profile():
    assert "ec2.amazonaws.com" in json.dumps(unq(DATA["aws_iam_policy_document.assume_role"]))
    assert expr(RES["aws_iam_instance_profile.this"]["role"]) == "aws_iam_role.this.name"
    assert expr(RES["aws_iam_role_policy.daemon"]["policy"]) == "data.aws_iam_policy_document.daemon.json"
    lt = RES["aws_launch_template.this"]
    assert expr(lt["iam_instance_profile"][0]["arn"]) == "aws_iam_instance_profile.this.arn"


def t_imdsv2_hop_limit_1():
    md = unq(RES["aws_launch_template.this"]["metadata_options"][0])
    assert md["http_tokens"] == "required", md
    assert md["http_put_response_hop_limit"] == 1, md
    assert md["http_endpoint"] == "enabled", md


def t_ami_from_ssm_parameter():
    assert "aws_ssm_parameter.ami" in DATA
    params = unq(LOCALS["ami_ssm_parameter"])
    params = params if isinstance(params, dict) else {}
    text = json.dumps(LOCALS["ami_ssm_parameter"])
    assert "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-" in text
    assert "/aws/service/canonical/ubuntu/server/" in text
    assert "data.aws_ssm_parameter.ami[0].value" in unq(LOCALS["ami_id"])


def t_asg_size_subnets_refresh():
    asg = unq(RES["aws_autoscaling_group.this"])
    for k in ("min_size", "desired_capacity"):
        assert asg[k] == "${var.gateway_count}", (k, asg[k])
    # Room to launch every replacement before terminating an old gateway.
    assert asg["max_size"] == "${var.gateway_count * 2}", asg["max_size"]
    assert default_of("gateway_count") == 2
    assert asg["vpc_zone_identifier"] == "${var.subnet_ids}"
    (ir,) = asg["instance_refresh"]
    assert ir["strategy"] == "Rolling"
    prefs = ir["preferences"][0]
    assert prefs["min_healthy_percentage"] == 100, prefs
    assert prefs["max_healthy_percentage"] == 200, prefs
    assert prefs["auto_rollback"] is True, prefs
    # Readiness gate: a launch lifecycle hook that defaults to ABANDON, completed by user data.
    (hook,) = asg["initial_lifecycle_hook"]
    assert hook["lifecycle_transition"] == "autoscaling:EC2_INSTANCE_LAUNCHING", hook
    assert hook["default_result"] == "ABANDON", hook
    assert hook["heartbeat_timeout"] == "${var.ready_timeout}", hook
    assert hook["name"] == "${local.launch_hook_name}", hook
    assert asg["launch_template"][0]["version"] == "${aws_launch_template.this.latest_version}"


def sg_rules() -> dict[str, dict]:
    return {k: unq(v) for k, v in RES.items() if k.startswith("aws_vpc_security_group_ingress_rule.")}


def t_vxlan_rule_only_from_remote_node_cidrs():
    rules = sg_rules()
    vx = rules["aws_vpc_security_group_ingress_rule.vxlan"]
    assert LOCALS["vxlan_port"] == 8472
    assert vx["ip_protocol"] == "udp" and vx["from_port"] == vx["to_port"] == "${local.vxlan_port}", vx
    assert vx["for_each"] == "${toset(var.remote_node_cidrs)}" and vx["cidr_ipv4"] == "${each.value}", vx
    # No other ingress rule can admit UDP 8472: the VPC forwarding rules skip it.
    fwd = unq(LOCALS["vpc_forward_rules"])
    assert "to = local.vxlan_port - 1" in fwd and "from = local.vxlan_port + 1" in fwd, fwd
    assert not re.search(r'protocol = "(udp|-1|all)", from = 0, to = 65535', fwd), fwd
    for name, r in rules.items():
        if name.endswith((".vxlan", ".vpc_forward", ".metrics")):
            continue
        raise AssertionError(f"unexpected ingress rule {name}")


def t_metrics_closed_by_default():
    rules = sg_rules()
    m = rules["aws_vpc_security_group_ingress_rule.metrics"]
    assert m["for_each"] == "${toset(var.metrics_ingress_cidrs)}" and default_of("metrics_ingress_cidrs") == []
    assert m["from_port"] == m["to_port"] == "${var.metrics_port}" and default_of("metrics_port") == 10080
    fwd = unq(LOCALS["vpc_forward_rules"])
    assert "to = var.metrics_port - 1" in fwd and "from = var.metrics_port + 1" in fwd, fwd
    assert "0.0.0.0/0" not in json.dumps(rules)
    # The daemon listens beyond localhost only when the security group admits someone.
    cfg = unq(LOCALS["config_toml"])
    assert 'metrics_listen = length(var.metrics_ingress_cidrs) > 0 ? "0.0.0.0:${var.metrics_port}" : ""' in cfg, cfg
    assert "[metrics]" not in render(MODULE / "templates" / "config.toml.tftpl", CONFIG_CASES["defaults"])


def t_lock_table():
    t = unq(RES["aws_dynamodb_table.lock"])
    assert t["billing_mode"] == "PAY_PER_REQUEST"
    assert t["hash_key"] == "lock_key"
    assert t["attribute"] == [{"name": "lock_key", "type": "S"}], t["attribute"]
    assert t["ttl"] == [{"attribute_name": "expires_at", "enabled": True}], t["ttl"]
    assert "var.enable_dynamodb_lock && var.create_lock_table" in t["count"]


def t_access_entry_group_matches_rbac():
    ae = unq(RES["aws_eks_access_entry.gateway"])
    assert ae["kubernetes_groups"] == ["${var.kubernetes_group}"], ae
    assert ae["principal_arn"] == "${aws_iam_role.this.arn}" and ae["cluster_name"] == "${var.cluster_name}"
    group = default_of("kubernetes_group")
    bound = set()
    for d in yaml.safe_load_all(RBAC_YAML.read_text()):
        if d and d.get("kind") in ("ClusterRoleBinding", "RoleBinding"):
            bound |= {s["name"] for s in d.get("subjects", []) if s.get("kind") == "Group"}
    assert group in bound, f"rbac.yaml binds groups {bound}, module default {group!r}"


def t_outputs():
    outs = blocks(MOD, "output")
    for o in ("autoscaling_group_name", "iam_role_arn", "security_group_id", "instance_profile_name",
              "launch_template_id", "lock_table_name"):
        assert o in outs, o
    ex_outs = blocks(EX, "output")
    for o, body in ex_outs.items():
        body = body[0] if isinstance(body, list) else body
        ref = expr(body["value"])
        assert ref.startswith("module.hybrid_gateway.") and ref.split(".")[2] in outs, (o, ref)


def t_templatefile_arguments_complete():
    for tpl, local in (("config.toml.tftpl", "config_toml"), ("user_data.sh.tftpl", "user_data")):
        text = (MODULE / "templates" / tpl).read_text()
        used = set(re.findall(r"(?<!\$)\$\{\s*(?:jsonencode\()?(\w+)", text))
        used |= set(re.findall(r"%\{ if (\w+)", text))
        passed = set(re.findall(r"(\w+)\s*=", unq(LOCALS[local]).split("{", 1)[1]))
        assert used <= passed, f"{tpl}: not passed {used - passed}"


CONFIG_CASES = {
    "defaults": dict(vpc_cidrs=["10.250.0.0/16"], hybrid_pod_cidrs=["192.168.32.0/23"],
                     remote_node_cidrs=["192.168.0.0/24"], cluster_name="my-cluster",
                     endpoint="https://0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com",
                     ca_file="/etc/hybrid-gateway/eks-ca.pem", region="us-west-2", route_table_ids=[],
                     route_table_tag="hybrid-gateway.io/managed=my-cluster", takeover="owned", cleanup_on_shutdown=False,
                     election_namespace="hybrid-gateway", election_mode="active-standby", dynamodb_lock=True,
                     lock_table_name="my-cluster-hybrid-gateway-lock", lock_key="my-cluster/hybrid-gateway-leader",
                     metrics_listen="", extra_config=""),
}
CONFIG_CASES["ids, no tag, no lock, cleanup"] = dict(
    CONFIG_CASES["defaults"], vpc_cidrs=["10.0.0.0/16", "100.64.0.0/16"], hybrid_pod_cidrs=["192.168.32.0/23", "192.168.64.0/22"],
    route_table_ids=["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"], route_table_tag=None, takeover="any",
    cleanup_on_shutdown=True, dynamodb_lock=False, election_namespace="kube-system")
CONFIG_CASES["per-az"] = dict(CONFIG_CASES["defaults"], election_mode="per-az")
CONFIG_CASES["metrics exposed"] = dict(CONFIG_CASES["defaults"], metrics_listen="0.0.0.0:10080")
CONFIG_CASES["extra_config"] = dict(CONFIG_CASES["defaults"], extra_config='[datapath]\nresync_interval = "10s"')


def t_config_renders_and_daemon_accepts():
    b = hgw_bin()
    if not b:
        skip("check-config on rendered configs", "no hybrid-gateway binary (set HGW_BIN or cargo build)")
        return
    for name, values in CONFIG_CASES.items():
        text = render(MODULE / "templates" / "config.toml.tftpl", values)
        cfg = tomllib.loads(text)
        assert cfg["gateway"]["vpc_cidrs"] == values["vpc_cidrs"]
        assert "kubeconfig" not in cfg.get("kubernetes", {}), "kubeconfig and [kubernetes.eks] are exclusive"
        assert ("dynamodb" in cfg["election"]) == values["dynamodb_lock"]
        assert cfg["election"]["mode"] == values["election_mode"]
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(text)
            f.flush()
            p = subprocess.run([b, "check-config", f.name], capture_output=True, text=True)
        assert p.returncode == 0, f"{name}: check-config exit {p.returncode}: {p.stdout}{p.stderr}\n{text}"


def user_data_values(**over) -> dict:
    v = dict(package_url="https://example.com/hybrid-gateway-0.1.0-1.x86_64.rpm", package_s3_uri="", os="al2023",
             package_sha256="0" * 64, region="us-west-2", hook_name="hybrid-gateway-ready", ready_timeout=600,
             unhealthy_after=120,
             ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
             config_toml=render(MODULE / "templates" / "config.toml.tftpl", CONFIG_CASES["defaults"]))
    v.update(over)
    return v


def t_user_data_shell_valid():
    for over in ({}, {"os": "ubuntu", "package_url": "", "package_s3_uri": "s3://bucket/hybrid-gateway_0.1.0-1_amd64.deb"}):
        text = render(MODULE / "templates" / "user_data.sh.tftpl", user_data_values(**over))
        assert text.startswith("#!/bin/bash\n")
        assert "hybrid-gateway check-config /etc/hybrid-gateway/config.toml.new" in text
        assert "systemctl start hybrid-gateway.service" in text
        assert text.index("check-config /etc") < text.index("systemctl start"), "starts before validating"
        # Nothing unverified is installed.
        assert 'sha256sum -c' in text
        install = text.index("dnf install") if "dnf install" in text else text.index("apt-get install")
        assert text.index("sha256sum -c") < install, "installs before verifying the SHA-256"
        # The hook is completed (CONTINUE) only after `hybrid-gateway status` succeeded.
        assert text.index("until hybrid-gateway status") < text.rindex("hook_result CONTINUE")
        assert "hook_result ABANDON" in text and "--lifecycle-action-result" in text
        assert "set-instance-health" in text and "Unhealthy" in text
        p = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        if shutil.which("shellcheck"):
            p = subprocess.run(["shellcheck", "-s", "bash", "-"], input=text, capture_output=True, text=True)
            assert p.returncode == 0, p.stdout


def t_terraform_renders_the_same():
    if not terraform_bin():
        skip("terraform console renders templates identically", "no terraform/tofu binary")
        return
    for name, values in CONFIG_CASES.items():
        ours = render(MODULE / "templates" / "config.toml.tftpl", values)
        theirs = terraform_render(MODULE / "templates" / "config.toml.tftpl", values)
        assert ours.rstrip() == theirs.rstrip(), f"{name}:\n--- ours\n{ours}\n--- terraform\n{theirs}"
    vals = user_data_values()
    ours = render(MODULE / "templates" / "user_data.sh.tftpl", vals)
    theirs = terraform_render(MODULE / "templates" / "user_data.sh.tftpl", vals)
    assert ours.rstrip() == theirs.rstrip(), "user data differs"


GOOD_VARS = {
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
    "vpc_cidrs": ["10.250.0.0/16"],
    "hybrid_pod_cidrs": ["192.168.32.0/23"],
    "remote_node_cidrs": ["192.168.0.0/24"],
    "cluster_name": "my-cluster",
    "package_url": "https://example.com/hybrid-gateway-0.1.0-1.x86_64.rpm",
    "package_sha256": "0123456789abcdef" * 4,
}
BAD_VARS = {
    "one subnet": ({"subnet_ids": ["subnet-0123456789abcdef0"]}, "at least 2 distinct subnets"),
    "same subnet twice": ({"subnet_ids": ["subnet-0123456789abcdef0"] * 2}, "at least 2 distinct subnets"),
    "malformed subnet id": ({"subnet_ids": ["subnet-1", "subnet-2"]}, "subnet-0123456789abcdef0"),
    "one gateway": ({"gateway_count": 1}, "gateway_count must be"),
    "fractional gateway count": ({"gateway_count": 2.5}, "gateway_count must be"),
    "bad VPC CIDR": ({"vpc_cidrs": ["10.0.0.0/33"]}, "IPv4 CIDR"),
    "IPv6 VPC CIDR": ({"vpc_cidrs": ["fd00::/64"]}, "IPv4 CIDR"),
    "9 VPC CIDRs": ({"vpc_cidrs": [f"10.{i}.0.0/16" for i in range(9)]}, "1 to 8"),
    "bad pod CIDR": ({"hybrid_pod_cidrs": ["192.168.32.0"]}, "IPv4 CIDR"),
    "no remote node CIDR": ({"remote_node_cidrs": []}, "at least one CIDR"),
    "remote nodes 0.0.0.0/0": ({"remote_node_cidrs": ["0.0.0.0/0"]}, "narrower than 0.0.0.0/0"),
    "bad metrics CIDR": ({"metrics_ingress_cidrs": ["prometheus"]}, "IPv4 CIDR"),
    "metrics on the VXLAN port": ({"metrics_port": 8472}, "not the VXLAN port"),
    "http package URL": ({"package_url": "http://example.com/x.rpm"}, "https:// URL"),
    "bad route table id": ({"route_table_ids": ["rtb-1"]}, "rtb-0123456789abcdef0"),
    "tag without value": ({"route_table_tag": "managed"}, "key=value"),
    "bad architecture": ({"architecture": "armv7"}, "x86_64"),
    "system: group": ({"kubernetes_group": "system:masters"}, "system:"),
    "unknown election mode": ({"election_mode": "per-zone"}, "election_mode must be"),
    "wildcard in lock key": ({"lock_key": "c/*"}, "without * or ?"),
    # What check-config rejects, rejected at plan time too.
    "VPC CIDR with host bits": ({"vpc_cidrs": ["10.250.3.0/16"]}, "without host bits"),
    "pod CIDR with host bits": ({"hybrid_pod_cidrs": ["192.168.33.0/23"]}, "without host bits"),
    "VPC CIDRs of two lengths": ({"vpc_cidrs": ["10.250.0.0/16", "100.64.0.0/17"]}, "same prefix length"),
    "overlapping VPC CIDRs": ({"vpc_cidrs": ["10.0.0.0/16", "10.0.0.0/16"]}, "must not overlap each other"),
    "overlapping pod CIDRs": ({"hybrid_pod_cidrs": ["192.168.32.0/23", "192.168.33.0/24"]}, "must not overlap each other"),
    "pod CIDR inside the VPC": ({"hybrid_pod_cidrs": ["10.250.32.0/23"]}, "must not overlap vpc_cidrs"),
    "VPC inside a pod CIDR": ({"hybrid_pod_cidrs": ["10.0.0.0/8"]}, "must not overlap vpc_cidrs"),
    "package SHA-256 missing digits": ({"package_sha256": "abc"}, "64 lowercase hex digits"),
    "package SHA-256 upper case": ({"package_sha256": "0123456789ABCDEF" * 4}, "64 lowercase hex digits"),
}


def t_variable_validations_with_terraform():
    if not terraform_bin():
        skip("variable validations evaluated by terraform", "no terraform/tofu binary")
        return
    env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    with tempfile.TemporaryDirectory() as d:
        # variables.tf alone needs no provider: init works offline and plan evaluates every
        # validation block with Terraform's own evaluator.
        shutil.copy(MODULE / "variables.tf", d)

        def tf(*args, vars_=None):
            if vars_ is not None:
                Path(d, "t.tfvars.json").write_text(json.dumps(vars_))
            return subprocess.run([terraform_bin(), *args], capture_output=True, text=True, cwd=d, env=env, timeout=300)

        for args in (("init", "-backend=false", "-input=false"), ("validate", "-no-color")):
            p = tf(*args)
            assert p.returncode == 0, f"terraform {args[0]}: {p.stdout}{p.stderr}"
        plan = ("plan", "-input=false", "-lock=false", "-no-color", "-var-file=t.tfvars.json")
        p = tf(*plan, vars_=GOOD_VARS)
        assert p.returncode == 0, f"valid variables rejected: {p.stdout}{p.stderr}"
        for name, (over, msg) in BAD_VARS.items():
            p = tf(*plan, vars_=dict(GOOD_VARS, **over))
            out = re.sub(r"\s+", " ", p.stdout + p.stderr)
            assert p.returncode != 0, f"{name}: accepted"
            assert msg in out, f"{name}: exit {p.returncode} without {msg!r}: {out[-600:]}"


def t_per_cluster_defaults():
    for v in ("route_table_tag", "lock_table_name", "lock_key"):
        assert default_of(v) is None, f"{v}: default {default_of(v)!r} is the same for every cluster"
    assert unq(LOCALS["lock_table_name"]).count("${var.cluster_name}-hybrid-gateway-lock") == 1
    assert unq(LOCALS["lock_key"]).count("${var.cluster_name}/hybrid-gateway-leader") == 1
    # Every use goes through the derived locals, never the raw (possibly null) variables.
    text = sources_text(MODULE)
    for v in ("route_table_tag", "lock_table_name", "lock_key"):
        outside = re.sub(r"locals \{.*?\n\}", "", text, flags=re.S)
        outside = re.sub(r'variable "\w+" \{.*?\n\}', "", outside, flags=re.S)
        assert f"var.{v}" not in outside, f"var.{v} used outside locals"


def t_iam_route_writes_in_own_vpc():
    stmts = module_policy_statements()
    for sid in ("WriteRoutesInTablesTaggedManaged", "WriteRoutesInListedTables"):
        conds = {c["variable"]: c for c in stmts[sid].get("condition", [])}
        assert "ec2:Vpc" in conds, sid
        assert conds["ec2:Vpc"]["values"] == ["${local.vpc_arn}"], conds["ec2:Vpc"]
    assert unq(LOCALS["vpc_arn"]).endswith(":vpc/${var.vpc_id}"), LOCALS["vpc_arn"]


def t_iam_lifecycle_scoped():
    pd = unq(DATA["aws_iam_policy_document.lifecycle"])
    stmts = {s["sid"]: s for s in pd["statement"]}
    w = stmts["CompleteLaunchHookAndReportHealth"]
    assert set(w["actions"]) == {"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat",
                                 "autoscaling:SetInstanceHealth"}, w["actions"]
    (r,) = w["resources"]
    assert ":autoScalingGroup:*:autoScalingGroupName/${var.name}-*" in r, r
    assert stmts["FindOwnAutoScalingGroup"]["actions"] == ["autoscaling:DescribeAutoScalingInstances"]
    assert expr(RES["aws_iam_role_policy.lifecycle"]["policy"]) == "data.aws_iam_policy_document.lifecycle.json"


def t_module_readme_documents_inputs_outputs():
    text = (MODULE / "README.md").read_text()
    for v in VARS:
        assert re.search(rf"^\| `{v}` \|", text, re.M), f"README: input {v} missing"
    for o in blocks(MOD, "output"):
        assert re.search(rf"^\| `{o}` \|", text, re.M), f"README: output {o} missing"
    for needed in ("VPC endpoint", "NAT", "autoscaling", "sts", "dynamodb", "ec2"):
        assert needed in text, needed


TESTS = [
    ("every .tf parses (python-hcl2)", t_parse_all),
    ("every module variable is used", t_every_variable_used),
    ("every module variable has a description and a type", t_every_variable_described_and_typed),
    ("no reference to an undeclared variable", t_no_undeclared_variable),
    ("every example variable is used", t_example_variables_used),
    ("example passes known and all required module variables", t_example_module_call_matches_module),
    ("CIDR variables validated with can(cidrhost(...))", t_cidr_variables_validated),
    ("counts validated (>= 2 subnets, >= 2 gateways, <= 8 VPC CIDRs)", t_count_variables_validated),
    ("every validation references its own variable", t_every_validation_references_its_variable),
    ("IAM actions exactly the documented set", t_iam_actions_exactly_documented),
    ("IAM statements match packaging/iam-policy.json by Sid (actions, conditions)", t_iam_statements_match_json_by_sid),
    ("no eks:DescribeCluster (user data does not call EKS)", t_iam_no_eks_describe_cluster),
    ("route writes scoped to route-table ARNs / managed tag", t_iam_route_writes_scoped),
    ("DynamoDB actions on the lock table and key only", t_iam_dynamodb_lock_table_only),
    ("ENIs tagged for the source/dest-check permission", t_eni_tagged_for_source_dest_permission),
    ("IAM role, instance profile, launch template wiring", t_role_and_instance_profile),
    ("IMDSv2 required, hop limit 1", t_imdsv2_hop_limit_1),
    ("AMI from the public SSM parameter (AL2023 / Ubuntu)", t_ami_from_ssm_parameter),
    ("ASG size, subnets, readiness hook, launch-before-terminate refresh with rollback", t_asg_size_subnets_refresh),
    ("UDP 8472 only from remote_node_cidrs", t_vxlan_rule_only_from_remote_node_cidrs),
    ("metrics port closed unless metrics_ingress_cidrs", t_metrics_closed_by_default),
    ("lock table PAY_PER_REQUEST, lock_key (S), TTL expires_at", t_lock_table),
    ("access entry binds the group rbac.yaml binds", t_access_entry_group_matches_rbac),
    ("outputs", t_outputs),
    ("templatefile() passes every template variable", t_templatefile_arguments_complete),
    ("rendered config.toml accepted by hybrid-gateway check-config", t_config_renders_and_daemon_accepts),
    ("rendered user data: bash -n, shellcheck, validates before starting", t_user_data_shell_valid),
    ("terraform console renders the templates identically", t_terraform_renders_the_same),
    ("per-cluster defaults: tag, lock table, lock key from cluster_name", t_per_cluster_defaults),
    ("IAM: route writes only in the cluster's VPC (ec2:Vpc)", t_iam_route_writes_in_own_vpc),
    ("IAM: lifecycle hook and health reporting scoped to this module's groups", t_iam_lifecycle_scoped),
    ("module README lists every input and output, and the endpoints/NAT needed", t_module_readme_documents_inputs_outputs),
    ("variable validations evaluated by terraform (good accepted, 29 bad rejected)", t_variable_validations_with_terraform),
]


def main() -> int:
    for name, fn in TESTS:
        check(name, fn)
    print()
    if FAILED:
        print("failed checks:")
        for n in FAILED:
            print(f"  - {n}")
    print(f"{PASSED} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
