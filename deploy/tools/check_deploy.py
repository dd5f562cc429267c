#!/usr/bin/env python3
"""Cross-file checks for deploy/: the things no single-file validator can see.

  check_deploy.py --repo REPO configs          example gateway.toml files vs the documented keys
  check_deploy.py --repo REPO consistency      Dockerfile / Kubernetes / systemd agree with the configs
  check_deploy.py --repo REPO render-k8s       print the kustomization's resources as one YAML
                                               stream (fallback when kubectl is not installed)

`consistency` on Kubernetes checks the gateway Deployment and, when there is one, the
Redis the replicas share (gateway.toml [redis]): every pod meets the "restricted" Pod
Security Standard, every Service and NetworkPolicy selects the pods it is meant for
(and only those), redis.url names the Redis Service and port, the gateway may reach
Redis and DNS, and Redis admits only the gateway pods.

`configs` reads the key list from docs/internal-api.md ("## Configuration keys"): every
key an example uses must be documented (the gateway rejects unknown keys), with a value
of the documented type; plus the rules the doc states (exactly one of admin_key_env /
admin_key_file, tls_cert and tls_key together, key_sha256 is SHA-256 hex, ...). It does
not replace `openai-admin-gateway check-config`, which validate.sh also runs when the
binary is built.

Exit 0 when clean, 1 with one `ERROR ...` line per problem.
"""
from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

PROBLEMS: list[str] = []


def err(where: str, msg: str) -> None:
    PROBLEMS.append(f"ERROR {where}: {msg}")


# ============================================================================ configs
def documented_schema(doc: Path) -> dict:
    """The TOML block under '## Configuration keys', with `# key = value` lines uncommented."""
    text = doc.read_text()
    m = re.search(r"^## Configuration keys.*?```toml\n(.*?)```", text, re.S | re.M)
    if not m:
        raise SystemExit(f"{doc}: no ```toml block under '## Configuration keys'")
    lines = []
    for line in m.group(1).splitlines():
        u = re.match(r"^#\s*([a-z_][a-z0-9_]*\s*=.*)$", line)
        lines.append(u.group(1) if u else line)
    return tomllib.loads("\n".join(lines))


def type_ok(example, value) -> bool:
    if isinstance(example, bool):
        return isinstance(value, bool)
    if isinstance(example, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(example, str):
        return isinstance(value, str)
    if isinstance(example, list):
        return isinstance(value, list)
    if isinstance(example, dict):
        return isinstance(value, dict)
    return True


HEX64 = re.compile(r"^[0-9a-f]{64}$")
ALLOW = re.compile(r"^(\*|[A-Z]+) (/[^ ]*)$")


def parse_addr(s: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9.]+|[A-Za-z0-9.-]+):(\d{1,5})", s)
    if not m or int(m.group(2)) > 65535:
        return None
    return m.group(1), int(m.group(2))


def check_config(path: Path, schema: dict) -> dict | None:
    where = str(path)
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        err(where, f"not TOML: {e}")
        return None
    for section, body in cfg.items():
        if section not in schema:
            err(where, f"unknown section/key [{section}]")
            continue
        if section == "clients":
            if not isinstance(body, list):
                err(where, "clients must be an array of tables ([[clients]])")
                continue
            proto = schema["clients"][0]
            names, hashes = set(), set()
            for i, c in enumerate(body):
                w = f"{where} clients[{i}]"
                for k, v in c.items():
                    if k not in proto:
                        err(w, f"unknown key clients.{k}")
                    elif k == "key_sha256":
                        vals = v if isinstance(v, list) else [v]
                        if not vals or not all(isinstance(x, str) and HEX64.match(x) for x in vals):
                            err(w, "key_sha256 must be 64 lowercase hex chars (or a list of them)")
                        for x in vals:
                            if x in hashes:
                                err(w, f"key_sha256 {x[:12]}... used by two clients")
                            hashes.add(x)
                    elif not type_ok(proto[k], v):
                        err(w, f"clients.{k} has type {type(v).__name__}, documented {type(proto[k]).__name__}")
                    elif k == "rate_limit":
                        for rk, rv in v.items():
                            if rk not in proto["rate_limit"]:
                                err(w, f"unknown key clients.rate_limit.{rk}")
                            elif not isinstance(rv, int) or rv <= 0:
                                err(w, f"clients.rate_limit.{rk} must be a positive integer")
                    elif k == "allow":
                        for pat in v:
                            if not isinstance(pat, str) or not ALLOW.match(pat):
                                err(w, f"allow pattern {pat!r} is not 'METHOD /path'")
                            elif "**" in pat and not pat.endswith("/**"):
                                err(w, f"allow pattern {pat!r}: ** only as the final segment")
                for k in ("name", "key_sha256"):
                    if k not in c:
                        err(w, f"missing clients.{k}")
                if c.get("name") in names:
                    err(w, f"duplicate client name {c.get('name')!r}")
                names.add(c.get("name"))
            continue
        if not isinstance(body, dict):
            err(where, f"[{section}] must be a table")
            continue
        for k, v in body.items():
            if k not in schema[section]:
                err(where, f"unknown key {section}.{k}")
            elif not type_ok(schema[section][k], v):
                err(where, f"{section}.{k} has type {type(v).__name__}, documented {type(schema[section][k]).__name__}")
    srv, up = cfg.get("server", {}), cfg.get("upstream", {})
    if ("admin_key_env" in up) == ("admin_key_file" in up):
        err(where, "exactly one of upstream.admin_key_env / upstream.admin_key_file")
    if ("tls_cert" in srv) != ("tls_key" in srv):
        err(where, "server.tls_cert and server.tls_key go together")
    addrs = {}
    for k in ("listen", "admin_listen"):
        if k in srv:
            a = parse_addr(srv[k])
            if not a:
                err(where, f"server.{k} {srv[k]!r} is not HOST:PORT")
            addrs[k] = a
    if addrs.get("listen") and addrs.get("admin_listen") and addrs["listen"][1] == addrs["admin_listen"][1]:
        err(where, "server.listen and server.admin_listen share a port")
    if not cfg.get("clients"):
        err(where, "no [[clients]]: every request would get 401")
    return cfg


def port_of(cfg: dict, key: str) -> int | None:
    a = parse_addr(cfg.get("server", {}).get(key, ""))
    return a[1] if a else None


# ============================================================================ kubernetes
def load_kustomization(kdir: Path) -> list[dict]:
    """Resources of kustomization.yaml, namespaced, with the configMapGenerator applied
    (without kustomize's hash suffix) and images replaced: enough for the checks below
    and for schema validation when kubectl is absent."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for r in k.get("resources", []):
        docs += [d for d in yaml.safe_load_all((kdir / r).read_text()) if d]
    for g in k.get("configMapGenerator", []):
        data = {}
        for f in g.get("files", []):
            key, _, src = f.partition("=")
            src = src or key
            data[Path(key).name] = (kdir / src).read_text()
        md = {"name": g["name"]}
        if g.get("options", {}).get("labels"):
            md["labels"] = g["options"]["labels"]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data})
    ns = k.get("namespace")
    for d in docs:
        if ns and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = ns
    for img in k.get("images", []):
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    return docs


def selector_matches(selector: dict, labels: dict) -> bool:
    ml = selector.get("matchLabels", selector)  # Service selectors are plain maps
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def check_pod_security(w: str, pod: dict) -> None:
    """The "restricted" Pod Security Standard (namespace.yaml enforces it), checked on
    every container, plus what we add: a read-only root file system, a numeric uid and
    memory requests and limits."""
    psc = pod.get("securityContext", {})
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(k):
            err(w, f"{k} is set")
    if psc.get("sysctls"):
        err(w, "securityContext.sysctls is set")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            err(w, f"volume {v.get('name')} is {sorted(kinds - RESTRICTED_VOLUMES)}, not allowed by the restricted profile")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        cw = f"{w} container {c.get('name')}"
        csc = c.get("securityContext", {})
        if csc.get("privileged"):
            err(cw, "privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            err(cw, "allowPrivilegeEscalation is not false")
        caps = csc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            err(cw, "capabilities.drop is not [ALL]")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            err(cw, f"capabilities.add {caps.get('add')} beyond NET_BIND_SERVICE")
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            err(cw, "runAsNonRoot is not set")
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or isinstance(uid, bool) or uid == 0:
            err(cw, f"runAsUser {uid!r}: want a numeric non-root uid (runAsNonRoot can't check a named USER)")
        if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            err(cw, "seccompProfile RuntimeDefault is not set")
        if csc.get("procMount", "Default") != "Default":
            err(cw, "procMount is not Default")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            err(cw, "hostPort is set")
        if csc.get("readOnlyRootFilesystem") is not True:
            err(cw, "readOnlyRootFilesystem is not true")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            if "memory" not in res.get(kind, {}):
                err(cw, f"resources.{kind}.memory missing")


def container_ports(dep: dict) -> dict:
    return {p["name"]: p["containerPort"]
            for c in dep["spec"]["template"]["spec"].get("containers", []) for p in c.get("ports", [])}


def check_kubernetes(repo: Path, cfg: dict | None, image_uid: int | None) -> None:
    kdir = repo / "deploy/kubernetes"
    w = "deploy/kubernetes"
    docs = load_kustomization(kdir)
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    # The gateway Deployment and, optionally, the Redis the replicas share; nothing else.
    deps = by_kind.get("Deployment", [])
    role = {id(d): d["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component") for d in deps}
    gws = [d for d in deps if role[id(d)] == "gateway"]
    redises = [d for d in deps if role[id(d)] == "redis"]
    for d in deps:
        if role[id(d)] not in ("gateway", "redis"):
            err(w, f"Deployment {d['metadata']['name']}: pod label app.kubernetes.io/component is neither gateway nor redis")
    if len(gws) != 1 or len(redises) > 1:
        err(w, f"want one gateway Deployment and at most one Redis, found {len(gws)} and {len(redises)}")
        return
    dep = gws[0]
    redis_dep = redises[0] if redises else None
    for d in deps:
        dw = f"{w} Deployment {d['metadata']['name']}"
        if not selector_matches(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]):
            err(dw, "selector does not match its pod labels")
        check_pod_security(dw, d["spec"]["template"]["spec"])
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    redis_labels = redis_dep["spec"]["template"]["metadata"]["labels"] if redis_dep else {}
    if redis_dep and selector_matches(spec["selector"], redis_labels):
        err(w, "the gateway Deployment's selector also matches the Redis pods")
    if spec.get("replicas", 1) < 2:
        err(w, "Deployment replicas < 2")
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if cfg:
        if ports.get("http") != port_of(cfg, "listen"):
            err(w, f"containerPort http {ports.get('http')} != server.listen port {port_of(cfg, 'listen')}")
        if ports.get("admin") != port_of(cfg, "admin_listen"):
            err(w, f"containerPort admin {ports.get('admin')} != server.admin_listen port {port_of(cfg, 'admin_listen')}")
        for k in ("listen", "admin_listen"):
            host = parse_addr(cfg["server"][k])[0]
            if host not in ("0.0.0.0", "[::]"):
                err(w, f"server.{k} binds {host}: kubelet probes and Services can't reach it")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        hg = c.get(probe, {}).get("httpGet", {})
        if hg.get("path") != path or hg.get("port") not in ("admin", ports.get("admin")):
            err(w, f"{probe} must be httpGet {path} on the admin port, is {hg}")
    # Grace period: preStop sleep + drain must fit, with margin.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = c.get("lifecycle", {}).get("preStop", {})
    sleep = 0
    if "sleep" in pre:
        sleep = int(pre["sleep"]["seconds"])
    elif "exec" in pre:
        cmd = pre["exec"]["command"]
        if Path(cmd[0]).name == "sleep":
            sleep = int(cmd[1])
    if sleep <= 0:
        err(w, "no preStop sleep: endpoints are not removed before SIGTERM closes the listeners")
    drain = cfg.get("server", {}).get("shutdown_grace_secs", 30) if cfg else 30
    # The gateway is gone within shutdown_grace_secs + 1 s of SIGTERM, whatever is running.
    if grace <= sleep + drain + 1:
        err(w, f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + shutdown_grace_secs {drain} + 1")
    # The restricted profile is checked above; the uid must also be the image's USER.
    psc = pod.get("securityContext", {})
    if image_uid is not None and psc.get("runAsUser", image_uid) != image_uid:
        err(w, f"runAsUser {psc.get('runAsUser')} != the image's USER {image_uid}")
    # Config and admin key mounts line up with --config and admin_key_file.
    args = c.get("args", [])
    conf_path = args[args.index("--config") + 1] if "--config" in args else None
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounted: dict[str, tuple[str, dict]] = {}
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"])
        if not v:
            err(w, f"volumeMount {m['name']} has no volume")
            continue
        src = v.get("configMap") or v.get("secret") or {}
        for it in src.get("items", []):
            mounted[f"{m['mountPath'].rstrip('/')}/{it['path']}"] = (it["key"], v)
    if conf_path not in mounted or "configMap" not in mounted[conf_path][1]:
        err(w, f"--config {conf_path} is not a mounted ConfigMap key")
    else:
        cm_name = mounted[conf_path][1]["configMap"]["name"]
        cms = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == cm_name]
        if not cms or mounted[conf_path][0] not in cms[0].get("data", {}):
            err(w, f"ConfigMap {cm_name} with key {mounted[conf_path][0]} is not generated")
        elif cfg is not None and tomllib.loads(cms[0]["data"][mounted[conf_path][0]]) != cfg:
            err(w, "the generated ConfigMap differs from deploy/kubernetes/gateway.toml")
    key_file = cfg.get("upstream", {}).get("admin_key_file") if cfg else None
    if key_file:
        if key_file not in mounted or "secret" not in mounted[key_file][1]:
            err(w, f"admin_key_file {key_file} is not a mounted Secret key")
        else:
            sec = mounted[key_file][1]["secret"]
            example = yaml.safe_load((kdir / "secret.example.yaml").read_text())
            if example["metadata"]["name"] != sec["secretName"] or mounted[key_file][0] not in example.get("stringData", {}):
                err(w, "secret.example.yaml name/key differ from the Deployment's secret volume")
    ann = spec["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") and int(ann["prometheus.io/port"]) != ports.get("admin"):
        err(w, "prometheus.io/port annotation is not the admin port")
    # Services: each selects the pods of exactly one Deployment and targets its ports.
    # Public one without the admin port; an admin one for the ServiceMonitor.
    svcs = by_kind.get("Service", [])
    svc_dep: dict[str, tuple[dict, dict]] = {}  # name -> (Service, the Deployment it selects)
    for s in svcs:
        sname = s["metadata"]["name"]
        sel = s["spec"].get("selector", {})
        hits = [d for d in deps if selector_matches(sel, d["spec"]["template"]["metadata"]["labels"])]
        if len(hits) != 1:
            err(w, f"Service {sname} selects the pods of {len(hits)} Deployments, want exactly one")
            continue
        svc_dep[sname] = (s, hits[0])
        dports = container_ports(hits[0])
        for p in s["spec"]["ports"]:
            if p.get("targetPort") not in dports and p.get("targetPort") not in dports.values():
                err(w, f"Service {sname} targets unknown port {p.get('targetPort')}")
    public = [s for s in svcs if s["metadata"]["name"] == dep["metadata"]["name"]]
    if not public:
        err(w, "no public Service named like the Deployment")
    for s in public:
        if svc_dep.get(s["metadata"]["name"], (None, None))[1] is not dep:
            err(w, "the public Service does not select the gateway pods")
        for p in s["spec"]["ports"]:
            if p.get("targetPort") in ("admin", ports.get("admin")) or p.get("port") == ports.get("admin"):
                err(w, "the public Service exposes the admin port")
        if s["spec"].get("type", "ClusterIP") != "ClusterIP":
            err(w, f"public Service is {s['spec']['type']}; expose it through your ingress instead")
    for sm in by_kind.get("ServiceMonitor", []):
        targets = [s for s in svcs if selector_matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if len(targets) != 1 or svc_dep.get(targets[0]["metadata"]["name"], (None, None))[1] is not dep:
            err(w, f"ServiceMonitor selects {len(targets)} Services, want exactly the gateway's admin one")
            continue
        names = {p.get("name") for p in targets[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") not in names:
                err(w, f"ServiceMonitor endpoint port {ep.get('port')} is not a port of {targets[0]['metadata']['name']}")
            tp = [p for p in targets[0]["spec"]["ports"] if p.get("name") == ep.get("port")]
            if tp and tp[0].get("targetPort") not in ("admin", ports.get("admin")):
                err(w, "ServiceMonitor scrapes something other than the admin port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selector_matches(pdb["spec"]["selector"], pod_labels):
            err(w, "PodDisruptionBudget selects no gateway pod")
        if redis_dep and selector_matches(pdb["spec"]["selector"], redis_labels):
            err(w, "PodDisruptionBudget also selects the single Redis pod: it would block every drain")
        if pdb["spec"].get("minAvailable", 0) >= spec.get("replicas", 1):
            err(w, "PodDisruptionBudget minAvailable >= replicas blocks every drain")
    if not by_kind.get("PodDisruptionBudget"):
        err(w, "no PodDisruptionBudget")
    nps = by_kind.get("NetworkPolicy", [])
    if not nps:
        err(w, "no NetworkPolicy: the admin port is open to every pod")
    gw_nps, redis_nps = [], []
    for np in nps:
        name = np["metadata"]["name"]
        on_gw = selector_matches(np["spec"]["podSelector"], pod_labels)
        on_redis = bool(redis_dep) and selector_matches(np["spec"]["podSelector"], redis_labels)
        if on_gw and on_redis:
            err(w, f"NetworkPolicy {name} selects both the gateway and the Redis pods")
        elif on_gw:
            gw_nps.append(np)
        elif on_redis:
            redis_nps.append(np)
        else:
            err(w, f"NetworkPolicy {name} selects no gateway{' or Redis' if redis_dep else ''} pod")
    if nps and not gw_nps:
        err(w, "no NetworkPolicy selects the gateway pods: the admin port is open to every pod")
    for np in gw_nps:
        for rule in np["spec"].get("ingress", []):
            rule_ports = {p.get("port") for p in rule.get("ports", [])}
            if rule_ports & {"admin", ports.get("admin")} and not rule.get("from"):
                err(w, "NetworkPolicy admits the admin port from everywhere")
            if not rule.get("ports"):
                err(w, "NetworkPolicy ingress rule without ports also opens the admin port")
    check_redis(w, cfg, dep, redis_dep, svc_dep, gw_nps, redis_nps)


def egress_allows(nps: list[dict], labels: dict | None, port: int, names: tuple = ()) -> bool:
    """Whether the pods these policies select may connect to `port` (a pod with `labels`
    in the same namespace, or anywhere when labels is None). Egress is open when no policy
    restricts it."""
    restricting = [np for np in nps if "Egress" in np["spec"].get("policyTypes", [])]
    if not restricting:
        return True
    for np in restricting:
        for rule in np["spec"].get("egress", []) or []:
            ports = rule.get("ports") or []
            if ports and not any(p.get("port") in (port, *names) for p in ports):
                continue
            peers = rule.get("to") or []
            if not peers:
                return True
            for peer in peers:
                if labels is None:
                    return True
                if set(peer) == {"podSelector"} and selector_matches(peer["podSelector"], labels):
                    return True
    return False


def check_redis(w: str, cfg: dict | None, dep: dict, redis_dep: dict | None, svc_dep: dict[str, tuple[dict, dict]],
                gw_nps: list[dict], redis_nps: list[dict]) -> None:
    """Several replicas need [redis] (shared budgets, invalidations seen by every replica),
    pointing at the Redis Service; that Redis keeps nothing (all of it is safe to lose),
    never runs twice behind its Service, and only the gateway pods may reach it."""
    url = (cfg or {}).get("redis", {}).get("url")
    if cfg is not None and dep["spec"].get("replicas", 1) >= 2 and not url:
        err(w, "replicas >= 2 without [redis] in gateway.toml: each replica would enforce every "
               "limit on its own and keep serving a user another replica just wrote")
    if not redis_dep:
        return
    rw = f"{w} Deployment {redis_dep['metadata']['name']}"
    if not url:
        err(w, "a Redis Deployment but no redis.url in gateway.toml")
        return
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss") or not u.hostname:
        err(w, f"redis.url {url!r} is not redis://HOST[:PORT][/DB]")
        return
    host, port = u.hostname, u.port or 6379
    # "NAME", or "NAME.NAMESPACE[.svc[.cluster.local]]" of a Service in this kustomization.
    svc = host.split(".")[0]
    if svc not in svc_dep or svc_dep[svc][1] is not redis_dep:
        err(w, f"redis.url host {host} is not a Service selecting the Redis pods")
    else:
        sp = [p for p in svc_dep[svc][0]["spec"]["ports"] if p.get("port") == port]
        rports = container_ports(redis_dep)
        if not sp:
            err(w, f"Service {svc} has no port {port} (redis.url)")
        elif rports.get(sp[0].get("targetPort"), sp[0].get("targetPort")) not in rports.values():
            err(w, f"Service {svc} port {port} targets no Redis container port")
    rspec = redis_dep["spec"]
    rpod = rspec["template"]["spec"]
    rc = rpod["containers"][0]
    if rspec.get("replicas", 1) != 1:
        err(rw, "replicas != 1: pub/sub reaches only the subscribers of one server")
    if rspec.get("strategy", {}).get("type") != "Recreate":
        err(rw, "strategy is not Recreate: a rolling update runs two Redis servers behind one Service")
    image = rc.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@sha256:" not in image and (not tag or tag == "latest"):
        err(rw, f"image {image} is not pinned to a tag or digest")
    argv = [str(a) for a in rc.get("command", []) + rc.get("args", [])]

    def opt(name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None
    if opt("--save") != "" or opt("--appendonly") != "no":
        err(rw, 'persistence is on: want --save "" and --appendonly no (rate-limit state and pub/sub are safe to lose)')
    rport = int(opt("--port") or 6379)
    if rport not in container_ports(redis_dep).values():
        err(rw, f"redis-server --port {rport} is not a containerPort")
    data = opt("--dir") or "/data"
    vols = {v["name"]: v for v in rpod.get("volumes", [])}
    if not any(m["mountPath"].rstrip("/") == data.rstrip("/") and "emptyDir" in vols.get(m["name"], {})
               for m in rc.get("volumeMounts", [])):
        err(rw, f"its working directory {data} is not an emptyDir (the root file system is read-only)")
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = " ".join(rc.get(probe, {}).get("exec", {}).get("command", []))
        if "redis-cli" not in cmd or "ping" not in cmd:
            err(rw, f"{probe} is not an exec of redis-cli ping")
    # Network: the gateway may reach Redis (and DNS, for the Service name); Redis admits
    # only the gateway pods.
    gw_labels = dep["spec"]["template"]["metadata"]["labels"]
    redis_labels = rspec["template"]["metadata"]["labels"]
    rnames = tuple(n for n, v in container_ports(redis_dep).items() if v == rport)
    if not egress_allows(gw_nps, redis_labels, rport, rnames):
        err(w, f"the gateway's NetworkPolicy egress does not allow the Redis pods on port {rport}")
    if not egress_allows(gw_nps, None, 53):
        err(w, "the gateway's NetworkPolicy egress does not allow DNS (port 53)")
    ingress_nps = [np for np in redis_nps if "Ingress" in np["spec"].get("policyTypes", [])]
    if not ingress_nps:
        err(w, "no NetworkPolicy restricts ingress to Redis: every pod in the cluster can reach it")
    for np in ingress_nps:
        for rule in np["spec"].get("ingress", []) or []:
            peers = rule.get("from") or []
            if not peers:
                err(w, f"NetworkPolicy {np['metadata']['name']} admits Redis from everywhere")
            for peer in peers:
                if set(peer) != {"podSelector"} or not selector_matches(peer["podSelector"], gw_labels) \
                        or selector_matches(peer["podSelector"], redis_labels):
                    err(w, f"NetworkPolicy {np['metadata']['name']} admits Redis from {peer}, not only the gateway pods")


# ============================================================================ docker
def dockerignore_allows(patterns: list[str], path: str) -> bool:
    allowed = True
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/"):
            allowed = neg
    return allowed


def check_docker(repo: Path, cfg: dict | None) -> int | None:
    w = "deploy/Dockerfile"
    text = (repo / w).read_text()
    logical = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in logical.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if len(stages) < 2:
        err(w, "not multi-stage")
    if not any("cargo build" in ln and "--release" in ln and "--locked" in ln for ln in lines):
        err(w, "no `cargo build --release --locked`")
    final = lines[max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")):]
    expose = sorted(int(p.split("/")[0]) for ln in final if ln.upper().startswith("EXPOSE ") for p in ln.split()[1:])
    if cfg:
        want = sorted({port_of(cfg, "listen"), port_of(cfg, "admin_listen")})
        if expose != want:
            err(w, f"EXPOSE {expose} != ports in deploy/docker/gateway.toml {want}")
        m = re.search(r"GATEWAY_ADMIN_PORT=(\d+)", logical)
        if not m or int(m.group(1)) != port_of(cfg, "admin_listen"):
            err(w, "GATEWAY_ADMIN_PORT (used by the HEALTHCHECK) is not the admin port")
        kf = cfg.get("upstream", {}).get("admin_key_file")
        if kf and kf not in text:
            err(w, f"the docker config's admin_key_file {kf} is not the path the Dockerfile documents")
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    uid = None
    if not users:
        err(w, "runtime stage has no USER")
    else:
        u = users[-1].split(":")[0]
        if not u.isdigit() or int(u) == 0:
            err(w, f"USER {users[-1]} must be a numeric non-root uid (runAsNonRoot checks it)")
        else:
            uid = int(u)
    if not any(ln.upper().startswith("HEALTHCHECK ") for ln in final):
        err(w, "no HEALTHCHECK")
    hc = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
    if hc and "gateway-healthcheck" in hc[0] and not any("gateway-healthcheck" in ln and ln.upper().startswith("COPY") for ln in final):
        err(w, "HEALTHCHECK program is not copied into the image")
    # COPY sources from the context exist and survive the .dockerignore allowlist.
    ign_file = repo / "deploy/Dockerfile.dockerignore"
    ign = [ln.strip() for ln in ign_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")] if ign_file.exists() else []
    for ln in lines:
        if not ln.upper().startswith(("COPY ", "ADD ")):
            continue
        parts = [p for p in shlex.split(ln)[1:] if not p.startswith("--")]
        if "--from=" in ln:
            continue
        for src in parts[:-1]:
            if not (repo / src).exists():
                err(w, f"COPY source {src} does not exist in the repository")
            elif not dockerignore_allows(ign, src.rstrip("/")):
                err(w, f"COPY source {src} is excluded by Dockerfile.dockerignore")
    ent = [ln for ln in final if ln.upper().startswith("ENTRYPOINT ")]
    if not ent or not ent[-1].split(None, 1)[1].startswith("["):
        err(w, "ENTRYPOINT must be exec form so the gateway is PID 1 and gets SIGTERM/SIGHUP")
    return uid


# ============================================================================ systemd
def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    cur = None
    for raw in path.read_text().splitlines():
        ln = raw.strip()
        if not ln or ln.startswith(("#", ";")):
            continue
        if ln.startswith("["):
            cur = ln.strip("[]")
            sections.setdefault(cur, [])
        elif "=" in ln and cur:
            k, v = ln.split("=", 1)
            sections[cur].append((k.strip(), v.strip()))
    return sections


def seconds(v: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", v):
        total += float(num) * {"ms": 0.001, "s": 1, "": 1, "min": 60, "m": 60, "h": 3600}[unit or ""]
    return total


def check_systemd(repo: Path, cfg: dict | None) -> None:
    unit = repo / "deploy/systemd/openai-admin-gateway.service"
    w = str(unit.relative_to(repo))
    svc = dict()
    multi: dict[str, list[str]] = {}
    for k, v in parse_unit(unit).get("Service", []):
        svc[k] = v
        multi.setdefault(k, []).append(v)
    start = shlex.split(svc.get("ExecStart", ""))
    conf = start[start.index("--config") + 1] if "--config" in start else None
    if conf != "/etc/openai-admin-gateway/gateway.toml":
        err(w, f"ExecStart --config is {conf}")
    if not any("check-config" in v and conf in v for v in multi.get("ExecStartPre", [])):
        err(w, "no ExecStartPre check-config of the same file")
    if not any(re.search(r"kill -HUP \$MAINPID", v) for v in multi.get("ExecReload", [])):
        err(w, "ExecReload does not send SIGHUP to $MAINPID")
    drain = cfg.get("server", {}).get("shutdown_grace_secs", 30) if cfg else 30
    if seconds(svc.get("TimeoutStopSec", "90")) <= drain + 1:
        err(w, f"TimeoutStopSec {svc.get('TimeoutStopSec')} <= shutdown_grace_secs {drain} + 1")
    if svc.get("Restart") not in ("on-failure", "always", "on-abnormal"):
        err(w, "Restart= should restart a crashed gateway")
    for k, want in (("DynamicUser", "yes"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                    ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                    ("MemoryDenyWriteExecute", "yes"), ("CapabilityBoundingSet", "")):
        if svc.get(k) != want:
            err(w, f"{k}={svc.get(k)!r}, want {want!r}")
    # LoadCredential=NAME:SRC  ->  /run/credentials/<unit>/NAME  must be admin_key_file.
    creds = [v.split(":", 1)[0] for v in multi.get("LoadCredential", [])]
    key_file = cfg.get("upstream", {}).get("admin_key_file") if cfg else None
    expect = {f"/run/credentials/{unit.name}/{c}" for c in creds}
    if key_file not in expect:
        err(w, f"admin_key_file {key_file} in deploy/systemd/gateway.toml is none of the unit's credentials {sorted(expect)}")
    if cfg and parse_addr(cfg["server"]["admin_listen"])[0] not in ("127.0.0.1", "[::1]", "localhost"):
        err(w, "deploy/systemd/gateway.toml: admin_listen should be loopback on a host install")
    nofile = svc.get("LimitNOFILE")
    mc = cfg.get("server", {}).get("max_connections", 10000) if cfg else 10000
    if not nofile or (nofile.isdigit() and int(nofile) <= mc):
        err(w, f"LimitNOFILE={nofile} does not cover server.max_connections={mc}")


# ============================================================================ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("what", choices=["configs", "consistency", "render-k8s"])
    a = ap.parse_args()
    repo = a.repo.resolve()
    if a.what == "render-k8s":
        print(yaml.safe_dump_all(load_kustomization(repo / "deploy/kubernetes"), sort_keys=False), end="")
        return 0
    schema = documented_schema(repo / "docs/internal-api.md")
    cfgs = {}
    for t in ("docker", "kubernetes", "systemd"):
        p = repo / "deploy" / t / "gateway.toml"
        before = len(PROBLEMS)
        cfgs[t] = check_config(p, schema)
        if a.what == "configs" and len(PROBLEMS) == before:
            print(f"ok {p.relative_to(repo)}: every key documented, {len(cfgs[t].get('clients', []))} clients")
    if a.what == "consistency":
        uid = check_docker(repo, cfgs["docker"])
        check_kubernetes(repo, cfgs["kubernetes"], uid)
        check_systemd(repo, cfgs["systemd"])
        if not PROBLEMS:
            print("ok Dockerfile, Kubernetes manifests and systemd unit agree with their gateway.toml files")
    for p in PROBLEMS:
        print(p)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
