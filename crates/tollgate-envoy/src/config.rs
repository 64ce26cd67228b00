//! envoyproxy/ratelimit's YAML configuration: parsed, validated and compiled into a
//! tree that a request's descriptors walk.
//!
//! One file holds one `domain` and its `descriptors`; a directory holds any number of
//! files (`*.yaml`, `*.yml`), one domain each. Every field of envoyproxy/ratelimit's
//! format is read (`key`, `value`, `rate_limit` with `unit`, `requests_per_unit`,
//! `unlimited`, `name`, `replaces`; `shadow_mode`, `detailed_metric`, nested
//! `descriptors`), and three more under `rate_limit`: `algorithm` (one of tollgate's
//! six; `fixed_window` when absent, which is what envoyproxy/ratelimit does),
//! `burst`, and `policy` (a named policy of the server, whose algorithm, numbers and
//! counters the rule then uses). Unknown fields are errors, so a typo is never
//! silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tollgate::{Algorithm, Nanos, Policy};

use crate::metrics::{EnvoyMetrics, RuleCounters};

/// A configuration error: the file, the line when known, the field (a path such as
/// `descriptors[0].descriptors[1].rate_limit.unit`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or directory) at fault.
    pub file: String,
    /// The line in the file, when known.
    pub line: Option<usize>,
    /// The field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file, line, self.field, self.message
            ),
            None => write!(f, "{}: {}: {}", self.file, self.field, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What the loader must know about the server the rules will run in.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The longest period (and burst tolerance) the store can hold; `None` for no
    /// bound beyond tollgate's own (the Redis store holds 2^52 ns, about 52 days).
    pub max_duration: Option<Nanos>,
    /// The server's named policies, which a rule may use by name (`policy: NAME`)
    /// to share their counters with the HTTP API.
    pub policies: Vec<(String, Policy)>,
}

/// A time unit of envoyproxy/ratelimit, with the lengths it gives them (a month is
/// 30 days and a year 365, as there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3600 s.
    Hour,
    /// 86,400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Parses a unit name, in any case (`second`, `SECOND`).
    pub fn parse(text: &str) -> Option<Unit> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    /// The unit's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The unit's value in the protocol's `RateLimit.Unit` enum.
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of a protocol `Unit` (or `RateLimitUnit`) value; `None` for
    /// UNKNOWN and values this version does not know.
    pub fn from_proto(value: i32) -> Option<Unit> {
        Some(match value {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }

    /// The unit exactly `period` long, if any.
    pub fn of_period(period: Nanos) -> Option<Unit> {
        [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Week,
            Unit::Month,
            Unit::Year,
        ]
        .into_iter()
        .find(|u| u.seconds() * 1_000_000_000 == period.as_u64())
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
}

/// What a rule does with a matching descriptor.
#[derive(Clone, Debug)]
pub enum Limit {
    /// `unlimited: true`: OK, nothing counted in the store.
    Unlimited,
    /// `requests_per_unit: 0`: every request is over the limit, nothing counted.
    Blocked {
        /// The unit, for `current_limit` and the time until the window ends.
        unit: Unit,
    },
    /// A tollgate policy.
    Policy {
        /// The policy (fixed_window of `requests_per_unit` per unit unless the file
        /// asks for another algorithm, or the server's policy the rule names).
        policy: Policy,
        /// Its unit; `None` for a named policy whose period is no unit.
        unit: Option<Unit>,
    },
}

/// One `rate_limit` of the file, compiled.
#[derive(Debug)]
pub struct Rule {
    /// The domain it belongs to.
    pub domain: String,
    /// What it does.
    pub limit: Limit,
    /// `requests_per_unit` as written.
    pub requests_per_unit: u32,
    /// `rate_limit.name` (empty when none).
    pub name: String,
    /// `rate_limit.replaces[].name`.
    pub replaces: Vec<String>,
    /// `shadow_mode`.
    pub shadow_mode: bool,
    /// `detailed_metric`.
    pub detailed_metric: bool,
    /// The policy part of the store key: `envoy/<domain>/<path>/<algorithm>`,
    /// escaped so it holds no `:` and no HTTP policy name can spell it (those hold
    /// no `/`); or, for a rule naming one of the server's policies (`policy: NAME`),
    /// that name, so the rule shares the HTTP API's counters (`NAME:<key>`).
    pub store_policy: String,
    /// The rule's metric label (`key_value.key`), as envoyproxy/ratelimit names its
    /// statistics.
    pub stat: String,
    /// Its counters, made once at load time.
    pub counters: RuleCounters,
}

/// Children of a tree node under one descriptor key.
#[derive(Debug, Default)]
struct KeyChildren {
    exact: HashMap<String, Node>,
    prefixes: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

/// A node of a domain's tree: maybe a rule, maybe children.
#[derive(Debug, Default)]
struct Node {
    rule: Option<Arc<Rule>>,
    children: HashMap<String, KeyChildren>,
}

/// One domain's rules.
#[derive(Debug)]
pub struct Domain {
    /// The file it came from.
    pub file: String,
    root: Node,
    rules: usize,
}

impl Domain {
    /// The rule for a descriptor's entries, as envoyproxy/ratelimit finds it: walk
    /// the tree entry by entry, at each level an exact `key`+`value` node first, then
    /// the longest prefix wildcard (`value: abc*`), then a `key`-only node; the rule
    /// applies only when the walk ends at the descriptor's last entry.
    pub fn find<'a, I>(&self, entries: I) -> Option<&Arc<Rule>>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: ExactSizeIterator,
    {
        let entries = entries.into_iter();
        let len = entries.len();
        let mut node = &self.root;
        for (i, (key, value)) in entries.enumerate() {
            let children = node.children.get(key)?;
            let next = children.exact.get(value).or_else(|| {
                children
                    .prefixes
                    .iter()
                    .filter(|(p, _)| value.starts_with(p.as_str()))
                    .max_by_key(|(p, _)| p.len())
                    .map(|(_, n)| n)
                    .or(children.any.as_deref())
            })?;
            if i + 1 == len {
                return next.rule.as_ref();
            }
            node = next;
        }
        None
    }

    /// How many rate limits the domain has.
    pub fn rules(&self) -> usize {
        self.rules
    }
}

/// Every domain of a configuration directory.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<String, Domain>,
}

impl RuleSet {
    /// The domain named `name`.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// The domains' names, sorted.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Every rule of every domain, in no particular order.
    fn each_rule<'a>(&'a self, mut f: impl FnMut(&'a Rule)) {
        fn walk<'a>(node: &'a Node, f: &mut impl FnMut(&'a Rule)) {
            if let Some(rule) = &node.rule {
                f(rule);
            }
            for children in node.children.values() {
                for n in children.exact.values() {
                    walk(n, f);
                }
                for (_, n) in &children.prefixes {
                    walk(n, f);
                }
                if let Some(n) = &children.any {
                    walk(n, f);
                }
            }
        }
        for d in self.domains.values() {
            walk(&d.root, &mut f);
        }
    }

    /// The store policy parts of every rule (`envoy/<domain>/<path>/<algorithm>`),
    /// for a front end that counts decisions by policy and wants the labels ahead
    /// of time.
    pub fn store_policies(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.each_rule(|rule| {
            if matches!(rule.limit, Limit::Policy { .. }) {
                out.push(rule.store_policy.as_str());
            }
        });
        out.sort_unstable();
        out
    }

    /// Every rule's metric labels, `(domain, rule)`, sorted.
    pub fn rule_stats(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        self.each_rule(|rule| out.push((rule.domain.as_str(), rule.stat.as_str())));
        out.sort_unstable();
        out
    }

    /// Rules over all domains.
    pub fn rules(&self) -> usize {
        self.domains.values().map(|d| d.rules).sum()
    }

    /// Builds a set from parsed files; two files with one domain are an error.
    pub fn from_files(files: Vec<(String, Domain, String)>) -> Result<RuleSet, ConfigError> {
        let mut domains: HashMap<String, Domain> = HashMap::new();
        for (name, domain, file) in files {
            if let Some(first) = domains.get(&name) {
                return Err(ConfigError {
                    file,
                    line: None,
                    field: "domain".to_owned(),
                    message: format!("domain {name:?} is already defined in {}", first.file),
                });
            }
            domains.insert(name, domain);
        }
        Ok(RuleSet { domains })
    }
}

// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileYaml {
    #[serde(default, deserialize_with = "scalar")]
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorYaml {
    #[serde(default, deserialize_with = "scalar")]
    key: String,
    #[serde(default, deserialize_with = "scalar")]
    value: String,
    rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    #[serde(default, deserialize_with = "scalar")]
    unit: String,
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unlimited: bool,
    #[serde(default, deserialize_with = "scalar")]
    name: String,
    #[serde(default)]
    replaces: Vec<ReplacesYaml>,
    algorithm: Option<String>,
    burst: Option<u32>,
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesYaml {
    #[serde(default, deserialize_with = "scalar")]
    name: String,
}

/// A YAML scalar as text: `value: 123` and `value: true` are the strings "123" and
/// "true", as envoyproxy/ratelimit (Go) reads them.
fn scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match serde_yaml_ng::Value::deserialize(d)? {
        serde_yaml_ng::Value::String(s) => Ok(s),
        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Ok(b.to_string()),
        serde_yaml_ng::Value::Null => Ok(String::new()),
        other => Err(D::Error::custom(format!(
            "expected a string, found {}",
            match other {
                serde_yaml_ng::Value::Sequence(_) => "a list",
                serde_yaml_ng::Value::Mapping(_) => "a mapping",
                _ => "a tagged value",
            }
        ))),
    }
}

/// Characters escaped in store-key parts: the key's separator `:`, the path's `/`
/// and `=`, the wildcard `*`, and `%` itself.
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            '*' => out.push_str("%2A"),
            c => out.push(c),
        }
    }
}

/// Appends a request value to a store key's client part (`/` separates values).
pub(crate) fn escape_value(text: &str, out: &mut String) {
    if !text.contains(['%', '/']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
}

struct Compiler<'a> {
    file: &'a str,
    domain: &'a str,
    options: &'a LoadOptions,
    metrics: &'a EnvoyMetrics,
    rules: usize,
}

impl Compiler<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: None,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// `path`: (key, value) of the levels above; `at`: the field path for errors.
    fn node(
        &mut self,
        list: &[DescriptorYaml],
        path: &mut Vec<(String, String)>,
        at: &str,
    ) -> Result<Node, ConfigError> {
        let mut node = Node::default();
        for (i, d) in list.iter().enumerate() {
            let here = format!("{at}descriptors[{i}]");
            if d.key.is_empty() {
                return Err(self.error(&format!("{here}.key"), "a descriptor needs a key"));
            }
            path.push((d.key.clone(), d.value.clone()));
            let mut child = self.node(&d.descriptors, path, &format!("{here}."))?;
            if let Some(limit) = &d.rate_limit {
                child.rule = Some(Arc::new(self.rule(limit, d, path, &here)?));
                self.rules += 1;
            }
            path.pop();
            let children = node.children.entry(d.key.clone()).or_default();
            let duplicate = || {
                self.error(
                    &here,
                    format!(
                        "the descriptor key {:?} with value {:?} appears twice at this level",
                        d.key, d.value
                    ),
                )
            };
            if d.value.is_empty() {
                if children.any.is_some() {
                    return Err(duplicate());
                }
                children.any = Some(Box::new(child));
            } else if let Some(prefix) = d.value.strip_suffix('*') {
                if children.prefixes.iter().any(|(p, _)| p == prefix) {
                    return Err(duplicate());
                }
                children.prefixes.push((prefix.to_owned(), child));
            } else {
                if children.exact.contains_key(&d.value) {
                    return Err(duplicate());
                }
                children.exact.insert(d.value.clone(), child);
            }
        }
        Ok(node)
    }

    fn rule(
        &self,
        y: &RateLimitYaml,
        d: &DescriptorYaml,
        path: &[(String, String)],
        here: &str,
    ) -> Result<Rule, ConfigError> {
        let at = |f: &str| format!("{here}.rate_limit.{f}");
        for (j, r) in y.replaces.iter().enumerate() {
            if r.name.is_empty() {
                return Err(self.error(
                    &at(&format!("replaces[{j}].name")),
                    "a replaced rule needs a name",
                ));
            }
        }
        let mut stat = String::new();
        for (key, value) in path {
            if !stat.is_empty() {
                stat.push('.');
            }
            stat.push_str(key);
            if !value.is_empty() {
                stat.push('_');
                stat.push_str(value);
            }
        }
        let algorithm = match &y.algorithm {
            None => Algorithm::FixedWindow,
            Some(name) => name.parse().map_err(|_| {
                self.error(
                    &at("algorithm"),
                    format!(
                        "unknown algorithm {name:?}: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket"
                    ),
                )
            })?,
        };
        let shared = match &y.policy {
            None => None,
            Some(name) => {
                if y.unlimited
                    || !y.unit.is_empty()
                    || y.requests_per_unit != 0
                    || y.algorithm.is_some()
                    || y.burst.is_some()
                {
                    return Err(self.error(
                        &at("policy"),
                        "a rate limit naming a policy takes its algorithm, limit, period and burst from it: give no unit, requests_per_unit, unlimited, algorithm or burst",
                    ));
                }
                let found = self.options.policies.iter().find(|(n, _)| n == name);
                let Some((_, policy)) = found else {
                    let known: Vec<&str> = self
                        .options
                        .policies
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect();
                    return Err(self.error(
                        &at("policy"),
                        format!(
                            "no policy is named {name:?} in the server's configuration; defined: {}",
                            known.join(", ")
                        ),
                    ));
                };
                Some((name.clone(), *policy))
            }
        };
        let limit = if let Some((_, policy)) = &shared {
            Limit::Policy {
                policy: *policy,
                unit: Unit::of_period(policy.period()),
            }
        } else if y.unlimited {
            if !y.unit.is_empty() || y.requests_per_unit != 0 || y.algorithm.is_some() {
                return Err(self.error(
                    &at("unlimited"),
                    "an unlimited rate limit takes no unit, requests_per_unit, algorithm or burst",
                ));
            }
            Limit::Unlimited
        } else {
            if y.unit.is_empty() {
                return Err(self.error(
                    &at("unit"),
                    "a rate limit needs a unit: second, minute, hour, day, week, month or year",
                ));
            }
            let unit = Unit::parse(&y.unit).ok_or_else(|| {
                self.error(
                    &at("unit"),
                    format!(
                        "unknown unit {:?}: expected second, minute, hour, day, week, month or year",
                        y.unit
                    ),
                )
            })?;
            if y.requests_per_unit == 0 {
                Limit::Blocked { unit }
            } else {
                let period = Nanos::new(unit.seconds() * 1_000_000_000);
                let mut policy = Policy::new(algorithm, y.requests_per_unit, period)
                    .map_err(|e| self.error(&at("unit"), e.to_string()))?;
                if let Some(burst) = y.burst {
                    policy = policy
                        .with_burst(burst)
                        .map_err(|e| self.error(&at("burst"), e.to_string()))?;
                }
                if let Some(max) = self.options.max_duration {
                    if policy.period() > max {
                        return Err(self.error(
                            &at("unit"),
                            format!(
                                "rule {stat:?}: a {} is longer than the store holds ({} s at most): use a shorter unit",
                                unit.name(),
                                max.as_u64() / 1_000_000_000
                            ),
                        ));
                    }
                    if policy.tolerance() > max {
                        return Err(self.error(
                            &at("burst"),
                            format!(
                                "rule {stat:?}: burst {} of one per {} ns is a tolerance longer than the store holds ({} s at most)",
                                policy.burst(),
                                policy.emission_interval().as_u64(),
                                max.as_u64() / 1_000_000_000
                            ),
                        ));
                    }
                }
                Limit::Policy {
                    policy,
                    unit: Some(unit),
                }
            }
        };
        let mut store_policy = String::from("envoy/");
        escape(self.domain, &mut store_policy);
        for (key, value) in path.iter().filter(|_| shared.is_none()) {
            store_policy.push('/');
            escape(key, &mut store_policy);
            if let Some(prefix) = value.strip_suffix('*') {
                store_policy.push('=');
                escape(prefix, &mut store_policy);
                store_policy.push('*');
            } else if !value.is_empty() {
                store_policy.push('=');
                escape(value, &mut store_policy);
            }
        }
        store_policy.push('/');
        store_policy.push_str(algorithm.name());
        let mut requests_per_unit = y.requests_per_unit;
        if let Some((name, policy)) = shared {
            // The HTTP API's key for this policy: `<name>:<key>`.
            store_policy = name;
            requests_per_unit = policy.limit();
        }
        let counters = self.metrics.rule(self.domain, &stat);
        Ok(Rule {
            domain: self.domain.to_owned(),
            limit,
            requests_per_unit,
            name: y.name.clone(),
            replaces: y.replaces.iter().map(|r| r.name.clone()).collect(),
            shadow_mode: d.shadow_mode,
            detailed_metric: d.detailed_metric,
            store_policy,
            stat,
            counters,
        })
    }
}

/// The rule of a descriptor that carries its own limit (`RateLimitDescriptor.limit`,
/// set by Envoy's `limit` action): as in envoyproxy/ratelimit, it takes the place
/// of whatever the file says, as a fixed window, never in shadow mode. Its store
/// key's path is the descriptor's keys under `%override`, which no file's path can
/// spell (a file's `%` is escaped), and its metric label `override.<keys>`.
pub fn override_rule<'a>(
    domain: &str,
    keys: impl Iterator<Item = &'a str>,
    requests_per_unit: u32,
    unit: i32,
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
) -> Result<Rule, String> {
    let unit = Unit::from_proto(unit).ok_or_else(|| format!("unknown unit {unit}"))?;
    let mut store_policy = String::from("envoy/");
    escape(domain, &mut store_policy);
    store_policy.push_str("/%override");
    let mut stat = String::from("override");
    for key in keys {
        store_policy.push('/');
        escape(key, &mut store_policy);
        stat.push('.');
        stat.push_str(key);
    }
    store_policy.push_str("/fixed_window");
    let limit = if requests_per_unit == 0 {
        Limit::Blocked { unit }
    } else {
        let period = Nanos::new(unit.seconds() * 1_000_000_000);
        let policy = Policy::new(Algorithm::FixedWindow, requests_per_unit, period)
            .map_err(|e| e.to_string())?;
        if options
            .max_duration
            .is_some_and(|max| policy.period() > max)
        {
            return Err(format!("a {} is longer than the store holds", unit.name()));
        }
        Limit::Policy {
            policy,
            unit: Some(unit),
        }
    };
    Ok(Rule {
        domain: domain.to_owned(),
        limit,
        requests_per_unit,
        name: String::new(),
        replaces: Vec::new(),
        shadow_mode: false,
        detailed_metric: false,
        counters: metrics.request_rule(domain, None, &stat),
        store_policy,
        stat,
    })
}

/// Parses one file's text; `file` names it in errors. Returns the domain's name and
/// its rules.
pub fn parse(
    file: &str,
    text: &str,
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
) -> Result<(String, Domain), ConfigError> {
    let yaml: FileYaml = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        field: field_of(&e.to_string()),
        message: e.to_string(),
    })?;
    if yaml.domain.is_empty() {
        return Err(ConfigError {
            file: file.to_owned(),
            line: None,
            field: "domain".to_owned(),
            message: "the file names no domain".to_owned(),
        });
    }
    let mut compiler = Compiler {
        file,
        domain: &yaml.domain,
        options,
        metrics,
        rules: 0,
    };
    let root = compiler.node(&yaml.descriptors, &mut Vec::new(), "")?;
    let rules = compiler.rules;
    Ok((
        yaml.domain.clone(),
        Domain {
            file: file.to_owned(),
            root,
            rules,
        },
    ))
}

/// The field a serde_yaml error is about: the path it starts with
/// (`descriptors[0].rate_limit.unit: invalid type ...`), and the unknown field's
/// name when that is the fault.
fn field_of(message: &str) -> String {
    let mut field = match message.split_once(": ") {
        Some((path, _)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            path.to_owned()
        }
        _ => String::new(),
    };
    if let Some(rest) = message.split("unknown field `").nth(1)
        && let Some((name, _)) = rest.split_once('`')
    {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    if field.is_empty() {
        field.push_str("(syntax)");
    }
    field
}

/// The configuration files of a directory: `*.yaml` and `*.yml`, not hidden (so the
/// `..data` folders of a Kubernetes ConfigMap are skipped; the files' symlinks are
/// followed), sorted by name, with their contents.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let dir_error = |message: String| ConfigError {
        file: dir.display().to_string(),
        line: None,
        field: "config_dir".to_owned(),
        message,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| dir_error(format!("cannot read the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| dir_error(format!("cannot read the directory: {e}")))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            field: "(file)".to_owned(),
            message: format!("cannot read the file: {e}"),
        })?;
        files.push((path.display().to_string(), bytes));
    }
    files.sort();
    Ok(files)
}

/// Compiles the files `read_dir` returned.
pub fn compile(
    files: &[(String, Vec<u8>)],
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
) -> Result<RuleSet, ConfigError> {
    let mut parsed = Vec::with_capacity(files.len());
    for (file, bytes) in files {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            field: "(file)".to_owned(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        let (name, domain) = parse(file, text, options, metrics)?;
        parsed.push((name, domain, file.clone()));
    }
    RuleSet::from_files(parsed)
}

/// Reads and compiles a configuration directory.
pub fn load_dir(
    dir: &Path,
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
) -> Result<RuleSet, ConfigError> {
    compile(&read_dir(dir)?, options, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(String, Domain), ConfigError> {
        parse(
            "t.yaml",
            text,
            &LoadOptions::default(),
            &EnvoyMetrics::new(),
        )
    }

    fn rule<'a>(d: &'a Domain, entries: &[(&'a str, &'a str)]) -> Option<&'a Arc<Rule>> {
        d.find(entries.iter().copied())
    }

    #[test]
    fn a_rule_is_a_fixed_window_of_the_unit_unless_an_algorithm_is_named() {
        let (name, d) = load(
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    rate_limit:\n      unit: MINUTE\n      requests_per_unit: 7\n      name: seven\n  - key: g\n    rate_limit:\n      unit: hour\n      requests_per_unit: 9\n      algorithm: gcra\n      burst: 3\n",
        )
        .expect("valid");
        assert_eq!(name, "d");
        assert_eq!(d.rules(), 2);
        let r = rule(&d, &[("k", "v")]).expect("k=v");
        let Limit::Policy { policy, unit } = &r.limit else {
            panic!("a policy")
        };
        assert_eq!(*unit, Some(Unit::Minute));
        assert_eq!(policy.algorithm(), Algorithm::FixedWindow);
        assert_eq!(
            (policy.limit(), policy.period().as_u64()),
            (7, 60 * 1_000_000_000)
        );
        assert_eq!(r.name, "seven");
        assert_eq!(r.store_policy, "envoy/d/k=v/fixed_window");
        assert_eq!(r.stat, "k_v");
        let g = rule(&d, &[("g", "anything")]).expect("g");
        let Limit::Policy { policy, .. } = &g.limit else {
            panic!("a policy")
        };
        assert_eq!((policy.algorithm(), policy.burst()), (Algorithm::Gcra, 3));
        assert_eq!(g.store_policy, "envoy/d/g/gcra");
        assert!(rule(&d, &[("k", "w")]).is_none());
        assert!(rule(&d, &[("k", "v"), ("x", "y")]).is_none());
    }

    #[test]
    fn matching_prefers_exact_then_longest_prefix_then_any() {
        let (_, d) = load(
            "domain: d\ndescriptors:\n  - key: p\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: p\n    value: /a*\n    rate_limit: {unit: second, requests_per_unit: 2}\n  - key: p\n    value: /a/b*\n    rate_limit: {unit: second, requests_per_unit: 3}\n  - key: p\n    value: /a/b/c\n    rate_limit: {unit: second, requests_per_unit: 4}\n",
        )
        .expect("valid");
        let limit = |v: &str| rule(&d, &[("p", v)]).map(|r| r.requests_per_unit);
        assert_eq!(limit("/a/b/c"), Some(4));
        assert_eq!(limit("/a/b/cd"), Some(3));
        assert_eq!(limit("/a/x"), Some(2));
        assert_eq!(limit("/z"), Some(1));
    }

    #[test]
    fn store_keys_escape_what_would_break_them() {
        let (_, d) = load(
            "domain: \"a:b/c\"\ndescriptors:\n  - key: \"k:1\"\n    value: \"v/=%*x\"\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        )
        .expect("valid");
        let r = rule(&d, &[("k:1", "v/=%*x")]).expect("matches");
        assert_eq!(
            r.store_policy,
            "envoy/a%3Ab%2Fc/k%3A1=v%2F%3D%25%2Ax/fixed_window"
        );
        assert!(!r.store_policy.contains(':'));
        let mut out = String::new();
        escape_value("x/y%z:w", &mut out);
        assert_eq!(out, "x%2Fy%25z:w");
    }

    #[test]
    fn numbers_and_booleans_are_read_as_strings() {
        let (_, d) = load(
            "domain: 42\ndescriptors:\n  - key: code\n    value: 404\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: flag\n    value: true\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
        )
        .expect("valid");
        assert!(rule(&d, &[("code", "404")]).is_some());
        assert!(rule(&d, &[("flag", "true")]).is_some());
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_line_when_known() {
        let cases: &[(&str, &str, Option<usize>, &str)] = &[
            ("descriptors: []\n", "domain", None, "no domain"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n",
                "descriptors[0].rate_limit.unit",
                None,
                "unknown unit \"fortnight\"",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      requests_per_unit: 1\n",
                "descriptors[0].rate_limit.unit",
                None,
                "needs a unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - value: v\n",
                "descriptors[0].descriptors[0].key",
                None,
                "needs a key",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
                "descriptors[1]",
                None,
                "appears twice",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n",
                "descriptors[0].rate_limit.unlimited",
                None,
                "takes no unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      algorithm: magic\n",
                "descriptors[0].rate_limit.algorithm",
                None,
                "unknown algorithm \"magic\"",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      replaces:\n        - name: \"\"\n      unit: second\n      requests_per_unit: 1\n",
                "descriptors[0].rate_limit.replaces[0].name",
                None,
                "needs a name",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limt:\n      unit: second\n",
                "descriptors[0].rate_limt",
                Some(4),
                "unknown field",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: -5\n",
                "descriptors[0].rate_limit.requests_per_unit",
                Some(6),
                "-5",
            ),
            ("domain: [d\n", "(syntax)", Some(2), ""),
        ];
        for (text, field, line, words) in cases {
            let e = load(text).expect_err(text);
            assert_eq!(e.file, "t.yaml");
            assert_eq!(&e.field, field, "{text}: {e}");
            assert_eq!(e.line, *line, "{text}: {e}");
            assert!(e.to_string().contains(words), "{text}: {e}");
            assert!(e.to_string().starts_with("t.yaml:"), "{e}");
        }
    }

    #[test]
    fn a_unit_longer_than_the_store_holds_is_an_error_naming_the_rule() {
        let text = "domain: d\ndescriptors:\n  - key: k\n    value: v\n    rate_limit:\n      unit: year\n      requests_per_unit: 1\n";
        let options = LoadOptions {
            max_duration: Some(Nanos::new(1 << 52)),
            policies: Vec::new(),
        };
        let e = parse("y.yaml", text, &options, &EnvoyMetrics::new()).expect_err("too long");
        assert_eq!(e.field, "descriptors[0].rate_limit.unit");
        assert!(e.to_string().contains("\"k_v\""), "{e}");
        assert!(e.to_string().contains("year"), "{e}");
        // A month fits, and the memory store has no such bound.
        parse(
            "m.yaml",
            &text.replace("year", "month"),
            &options,
            &EnvoyMetrics::new(),
        )
        .expect("a month fits");
        load(text).expect("no bound without a store's");
        let burst = "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: month\n      requests_per_unit: 1\n      algorithm: gcra\n      burst: 2\n";
        let e = parse("b.yaml", burst, &options, &EnvoyMetrics::new()).expect_err("tolerance");
        assert_eq!(e.field, "descriptors[0].rate_limit.burst");
    }

    #[test]
    fn a_rule_may_use_a_server_policy_and_its_counters() {
        let api = Policy::new(Algorithm::Gcra, 5, Nanos::new(3_600_000_000_000)).expect("policy");
        let odd =
            Policy::new(Algorithm::FixedWindow, 9, Nanos::new(90_000_000_000)).expect("policy");
        let options = LoadOptions {
            max_duration: None,
            policies: vec![("api".to_owned(), api), ("odd".to_owned(), odd)],
        };
        let text = "domain: d\ndescriptors:\n  - key: api_key\n    rate_limit:\n      policy: api\n  - key: o\n    rate_limit:\n      policy: odd\n";
        let (_, d) = parse("p.yaml", text, &options, &EnvoyMetrics::new()).expect("valid");
        let r = rule(&d, &[("api_key", "alice")]).expect("matches");
        assert_eq!(r.store_policy, "api", "the HTTP API's key is api:<key>");
        assert_eq!(r.requests_per_unit, 5);
        assert!(
            matches!(r.limit, Limit::Policy { policy, unit: Some(Unit::Hour) } if policy == api)
        );
        let o = rule(&d, &[("o", "x")]).expect("matches");
        assert!(
            matches!(o.limit, Limit::Policy { unit: None, .. }),
            "90 s is no unit"
        );
        let e = parse(
            "p.yaml",
            &text.replace("policy: odd", "policy: nope"),
            &options,
            &EnvoyMetrics::new(),
        )
        .expect_err("unknown");
        assert_eq!(e.field, "descriptors[1].rate_limit.policy");
        assert!(e.message.contains("defined: api, odd"), "{e}");
        let e = parse(
            "p.yaml",
            &text.replace("policy: odd", "policy: odd\n      unit: second"),
            &options,
            &EnvoyMetrics::new(),
        )
        .expect_err("both");
        assert_eq!(e.field, "descriptors[1].rate_limit.policy");
    }

    #[test]
    fn two_files_with_one_domain_are_an_error() {
        let metrics = EnvoyMetrics::new();
        let files = vec![
            ("a.yaml".to_owned(), b"domain: d\n".to_vec()),
            ("b.yaml".to_owned(), b"domain: d\n".to_vec()),
        ];
        let e = compile(&files, &LoadOptions::default(), &metrics).expect_err("duplicate");
        assert_eq!(e.file, "b.yaml");
        assert!(e.message.contains("a.yaml"), "{e}");
    }
}
