#!/usr/bin/env python3
"""Helpers of tests/e2e/deploy_test.sh: render the files in deploy/ for a hermetic run, and check
them against the real daemons and a real Prometheus.

  unit-argv UNIT --set VAR=VALUE... --map OLD=NEW...
      The argv systemd would run for UNIT's ExecStart (Environment= defaults, then --set
      overrides; ${VAR} is one word, a lone $VAR splits on spaces), with every path argument
      under OLD moved under NEW. NUL-separated on stdout. Fails unless the binary was mapped.
  render-prometheus CONFIG OUT_DIR --target JOB=HOST:PORT...
      CONFIG with each job's static targets replaced (nothing else changes), into OUT_DIR.
  flags FILE... --help-output HELP_FILE
      Every --flag the files name (their comments included, lines running systemctl or
      shuttlectl excepted)
      must be a flag the binary's --helpfull lists.
  targets-up URL JOB...       exit 0 once every active target of the given jobs is up.
  rules-ok URL RULES_FILE     exit 0 once Prometheus evaluated every rule of RULES_FILE (health ok).
  check-names URL DASHBOARD RULES SOURCE_DIR --lazy NAME...
      Every metric name and label the dashboard and the rules use must exist in Prometheus; a name
      given with --lazy may be absent (its series appears only after a fault) if the sources
      under SOURCE_DIR register it. The dashboard's panels must all use the data source
      variable.
  eval URL DASHBOARD RULES    every rule and panel expression runs through /api/v1/query.

Only the Python standard library and PyYAML. Each problem is printed on its own line.
"""
import argparse
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request

import yaml

METRIC_RE = re.compile(r"\b(shuttle_[a-z0-9_]+)\b")
UP_RE = re.compile(r"(?<![A-Za-z0-9_])up\s*\{")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR_RE = re.compile(r"\{([^{}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
LEGEND_LABEL_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ANNOTATION_LABEL_RE = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus itself gives every scraped series, or that histogram buckets carry.
BUILTIN_LABELS = {"instance", "job", "le", "__name__"}
# How every panel and query variable of the dashboard names its data source: the variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables, as the test evaluates the dashboard's expressions.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$agent": ".*",
    "$controller_job": "shuttle-controller",
}


def die(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def http_json(url, params=None):
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            return json.load(error)
        except ValueError:
            return {"status": "error", "error": "HTTP %d" % error.code}


# ----- systemd units ------------------------------------------------------------------------


def unit_service_settings(path):
    """(key, value) pairs of the [Service] section, continuation lines joined."""
    settings = []
    section = None
    pending = ""
    with open(path) as f:
        for raw in f.read().splitlines():
            if not pending and raw.lstrip().startswith(("#", ";")):
                continue
            if raw.endswith("\\"):
                pending += raw[:-1] + " "
                continue
            line = (pending + raw).strip()
            pending = ""
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                settings.append((key.strip(), value.strip()))
    return settings


def unit_argv(args):
    env = {}
    exec_start = []
    for key, value in unit_service_settings(args.unit):
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = val
        elif key == "ExecStart":
            exec_start.append(value)
    if len(exec_start) != 1:
        die("%s: want exactly one ExecStart=, found %d" % (args.unit, len(exec_start)))
    for assignment in args.set:
        name, _, val = assignment.partition("=")
        env[name] = val

    def braced(match):
        if match.group(1) not in env:
            die("%s: ExecStart uses ${%s}, which no Environment= sets" % (args.unit, match.group(1)))
        return env[match.group(1)]

    argv = []
    for word in shlex.split(exec_start[0]):
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:
            argv.extend(env.get(lone.group(1), "").split())
            continue
        word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", braced, word)
        if "$" in word:
            die("%s: cannot expand '%s'" % (args.unit, word))
        argv.append(word)

    maps = [m.partition("=")[::2] for m in args.map]
    binary = argv[0]
    for i, word in enumerate(argv):
        for old, new in maps:
            if word == old or word.startswith(old + "/"):
                argv[i] = new + word[len(old):]
                break
    if argv[0] == binary:
        die("%s: the binary %s was not mapped to the built one" % (args.unit, binary))
    sys.stdout.write("\0".join(argv))


def flags(args):
    with open(args.help_output) as f:
        known = set(re.findall(r"--([a-z][a-z0-9_]*)", f.read()))
    if not known:
        die("%s lists no flags" % args.help_output)
    problems = []
    for path in args.files:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if re.search(r"\b(systemctl|shuttlectl) ", line):
                    continue  # Instructions that run another program, with its own flags.
                for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", line):
                    if flag.replace("-", "_") not in known:
                        problems.append("%s:%d: --%s is not a flag of the binary" %
                                        (path, number, flag))
    if problems:
        die("\n".join(problems))


# ----- Prometheus ---------------------------------------------------------------------------


def render_prometheus(args):
    with open(args.config) as f:
        config = yaml.safe_load(f)
    targets = {}
    for spec in args.target:
        job, _, target = spec.partition("=")
        targets.setdefault(job, []).append(target)
    jobs = [job["job_name"] for job in config.get("scrape_configs", [])]
    if sorted(jobs) != sorted(targets):
        die("%s: scrape jobs %s, the test targets %s" % (args.config, jobs, sorted(targets)))
    for job in config["scrape_configs"]:
        static = job.get("static_configs")
        if not static:
            die("%s: job %s has no static_configs" % (args.config, job["job_name"]))
        static[0]["targets"] = targets[job["job_name"]]
        del static[1:]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "prometheus.yml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def targets_up(args):
    data = http_json(args.url + "/api/v1/targets", {"state": "active"})
    if data.get("status") != "success":
        return 1
    health = {}
    for target in data["data"]["activeTargets"]:
        health.setdefault(target["labels"].get("job"), []).append(target["health"])
    ok = all(health.get(job) and all(h == "up" for h in health[job]) for job in args.jobs)
    print(" ".join("%s=%s" % (job, ",".join(health.get(job, ["absent"]))) for job in args.jobs))
    return 0 if ok else 1


def rules_ok(args):
    with open(args.rules_file) as f:
        want = {rule["alert"] for group in yaml.safe_load(f)["groups"] for rule in group["rules"]}
    data = http_json(args.url + "/api/v1/rules")
    if data.get("status") != "success":
        return 1
    health = {}
    for group in data["data"]["groups"]:
        for rule in group["rules"]:
            health[rule["name"]] = (rule["health"], rule.get("lastError", ""))
    missing = sorted(want - set(health))
    bad = sorted("%s=%s %s" % (name, h, err) for name, (h, err) in health.items() if h != "ok")
    print("loaded %d of %d rules; missing %s; not ok: %s" % (len(want) - len(missing), len(want),
                                                             missing, bad))
    return 0 if not missing and not bad else 1


# ----- names and expressions ---------------------------------------------------------------


def dashboard_queries(dashboard):
    """(where, expr, legend) of every panel target, and of every variable query."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    out.append(("panel '%s' %s" % (panel.get("title"), target.get("refId")),
                                target["expr"], target.get("legendFormat", "")))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            out.append(("variable $%s" % var["name"], query, ""))
    return out


def rule_queries(rules):
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            text = json.dumps(rule.get("annotations", {})) + json.dumps(rule.get("labels", {}))
            out.append(("alert %s" % rule["alert"], rule["expr"], text))
    return out


def load_queries(dashboard_path, rules_path):
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    return dashboard_queries(dashboard), rule_queries(rules)


def names_in(expr):
    names = set(METRIC_RE.findall(expr))
    if UP_RE.search(expr):
        names.add("up")
    return names


def labels_in(expr, legend):
    labels = set()
    for group in GROUPING_RE.findall(expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    for selector in SELECTOR_RE.findall(expr):
        labels.update(MATCHER_RE.findall(selector))
    labels.update(LEGEND_LABEL_RE.findall(legend))
    labels.update(ANNOTATION_LABEL_RE.findall(legend))
    return labels


def family(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def registered_in_sources(name, source_dir):
    """True if a C++ file under agent/, controller/ or common/ registers the family `name`."""
    needle = 'Name("%s")' % name
    for top in ("agent", "controller", "common"):
        for root, _, files in os.walk(os.path.join(source_dir, top)):
            for file in files:
                if file.endswith((".cc", ".h")) and not file.endswith("_test.cc"):
                    with open(os.path.join(root, file), errors="replace") as f:
                        if needle in f.read():
                            return True
    return False


def dashboard_problems(path):
    """What would make Grafana import the dashboard badly: the data source must be the
    `datasource` variable everywhere (no data source uid of the author's Grafana), panel ids
    unique, every panel placed and queried."""
    with open(path) as f:
        dashboard = json.load(f)
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource" or \
            variables["datasource"].get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of Prometheus data sources")
    for name, var in variables.items():
        if var.get("type") == "query" and var.get("datasource") != DATASOURCE:
            problems.append("dashboard variable $%s: data source is not ${datasource}" % name)
    ids = set()
    for panel in dashboard.get("panels", []):
        where = "dashboard panel '%s'" % panel.get("title")
        if panel.get("id") in ids:
            problems.append("%s: id %s used twice" % (where, panel.get("id")))
        ids.add(panel.get("id"))
        if not {"h", "w", "x", "y"} <= set(panel.get("gridPos", {})):
            problems.append("%s: no gridPos" % where)
        if panel.get("type") == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        if not panel.get("targets"):
            problems.append("%s: no query" % where)
        if any(source != DATASOURCE for source in sources):
            problems.append("%s: data source is not ${datasource}" % where)
    return problems


def check_names(args):
    dashboard, rules = load_queries(args.dashboard, args.rules)
    data = http_json(args.url + "/api/v1/label/__name__/values")
    if data.get("status") != "success":
        die("label/__name__/values: %s" % data)
    present = set(data["data"])
    series_labels = {}

    def labels_of(name):
        if name not in series_labels:
            got = http_json(args.url + "/api/v1/series", {"match[]": name})
            series_labels[name] = {label for series in got.get("data", []) for label in series}
        return series_labels[name]

    problems = dashboard_problems(args.dashboard)
    used = set()
    lazy_absent = set()
    for where, expr, legend in dashboard + rules:
        names = names_in(expr)
        if not names:
            problems.append("%s: names no metric: %s" % (where, expr))
            continue
        used |= names
        absent = {n for n in names if n not in present}
        for name in sorted(absent):
            if family(name) in args.lazy and registered_in_sources(family(name), args.source_dir):
                lazy_absent.add(name)
            else:
                problems.append("%s: metric %s does not exist in Prometheus" % (where, name))
        if absent:
            continue  # Its labels can't be checked without its series.
        allowed = BUILTIN_LABELS.union(*(labels_of(n) for n in names))
        for label in sorted(labels_in(expr, legend) - allowed):
            problems.append("%s: label '%s' is on none of the series of %s" %
                            (where, label, ", ".join(sorted(names))))
    for line in problems:
        print(line)
    print("%d metric names used (%d panels/variables, %d alert rules); absent but lazily created: "
          "%s" % (len(used), len(dashboard), len(rules), ", ".join(sorted(lazy_absent)) or "none"))
    return 1 if problems else 0


def evaluate(args):
    dashboard, rules = load_queries(args.dashboard, args.rules)
    problems = []
    count = 0
    for where, expr, _ in dashboard + rules:
        if where.startswith("variable "):
            continue  # label_values() is Grafana's, not PromQL; check-names covers its metric.
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if "$" in expr:
            problems.append("%s: unknown variable in %s" % (where, expr))
            continue
        result = http_json(args.url + "/api/v1/query", {"query": expr})
        count += 1
        if result.get("status") != "success":
            problems.append("%s: %s: %s" % (where, result.get("error"), expr))
    for line in problems:
        print(line)
    print("%d expressions evaluated, %d failed" % (count, len(problems)))
    return 1 if problems else 0


# Each command: its function and its arguments, as argparse takes them ("--x*": repeatable
# option, "--x!": required option, "x+": one or more positional values).
COMMANDS = {
    "unit-argv": (unit_argv, ["unit", "--set*", "--map*"]),
    "flags": (flags, ["files+", "--help-output!"]),
    "render-prometheus": (render_prometheus, ["config", "out_dir", "--target*"]),
    "targets-up": (targets_up, ["url", "jobs+"]),
    "rules-ok": (rules_ok, ["url", "rules_file"]),
    "check-names": (check_names, ["url", "dashboard", "rules", "source_dir", "--lazy*"]),
    "eval": (evaluate, ["url", "dashboard", "rules"]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, arguments) in COMMANDS.items():
        command = sub.add_parser(name)
        for spec in arguments:
            if spec.endswith("*"):
                command.add_argument(spec[:-1], action="append", default=[])
            elif spec.endswith("!"):
                command.add_argument(spec[:-1], required=True)
            elif spec.endswith("+"):
                command.add_argument(spec[:-1], nargs="+")
            else:
                command.add_argument(spec)
        command.set_defaults(func=func)
    args = parser.parse_args()
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
