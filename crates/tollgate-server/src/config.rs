//! The server's configuration: a TOML file (`--config` or `TOLLGATE_CONFIG`), then
//! the environment, then flags, each overriding the one before; with no file and no
//! environment, the seed-compatible preset `in_memory_token_bucket`.
//!
//! **Invariant:** only this module reads configuration and environment variables
//! (the caller passes the environment in, so tests give their own).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tollgate::{Algorithm, Policy, parse_duration};
use toml::Spanned;

/// Where the server listens when nothing says otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);

/// The most worker threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Bearer token for `POST /v1/reset`; the route is off without one.
    pub admin_token: Option<String>,
    /// Longest key accepted, in bytes.
    pub max_key_len: usize,
    /// Largest request body accepted by the decision API, in bytes.
    pub max_body_bytes: usize,
    /// Worker threads serving connections; 0 means two per core this process may
    /// use (see `serve.rs`).
    pub workers: usize,
    /// Most client connections open at once (HTTP and gRPC together); at the cap
    /// the server accepts no more until one closes (they wait in the listen queue).
    pub max_connections: usize,
    /// Most connections open at once from one client (an IPv4 address, or an IPv6
    /// /64), HTTP and gRPC together; a connection over it is closed as soon as it is
    /// accepted. 0: no such cap (the default: behind a proxy or a load balancer every
    /// connection comes from a few addresses).
    pub max_connections_per_client: usize,
    /// A second HTTP listener for operations alone (`/healthz`, `/readyz`,
    /// `/metrics`), outside `max_connections` and served apart from the workers, so
    /// probes and scrapes are answered while the main listener is full or busy.
    /// `None` runs none.
    pub admin_listen: Option<SocketAddr>,
    /// The store.
    pub store: StoreConfig,
    /// The named policies.
    pub policies: Vec<NamedPolicy>,
    /// The protected API.
    pub protect: Protect,
    /// The preset the policies came from, if any.
    pub preset: Option<Preset>,
    /// Lines to log at start-up (settings accepted and ignored, and why).
    pub notes: Vec<String>,
    /// `[envoy]`: the Envoy rate limit service (gRPC); `None` runs no listener.
    pub envoy: Option<EnvoyConfig>,
}

/// Where the Envoy rate limit service listens when `[envoy]` names no address.
pub const DEFAULT_ENVOY_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// `[envoy]`: the gRPC `envoy.service.ratelimit.v3.RateLimitService`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// Address and port of the gRPC listener.
    pub listen: SocketAddr,
    /// The directory of envoyproxy/ratelimit YAML files.
    pub config_dir: PathBuf,
    /// Global shadow mode: decide and count, but always answer OK.
    pub shadow_mode: bool,
    /// How often the directory is read for changes.
    pub reload_interval: Duration,
    /// The domains the directory held when the configuration was checked, with
    /// their rule counts (for `check-config`).
    pub domains: Vec<(String, usize)>,
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// `memory://`, `redis://…`, `rediss://…` or `redis+cluster://…`.
    pub url: String,
    /// What to do when the store fails or exceeds `timeout`.
    pub on_error: OnErrorMode,
    /// How long a decision may take.
    pub timeout: Duration,
    /// Fleet size, for `on_error = "local"` (each node gets `limit / nodes`).
    pub nodes: u32,
    /// Redis decisions in a row that time out or find Redis unreachable before
    /// the store's circuit breaker opens (`on_error` then answers at once, without
    /// waiting out `timeout`); 0 turns the breaker off.
    pub breaker_failures: u32,
    /// How long an open breaker answers by `on_error` before a probe goes to Redis.
    pub breaker_cooldown: Duration,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Most keys the memory store holds.
    pub max_keys: usize,
}

/// `on_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnErrorMode {
    /// Answer 503.
    Deny,
    /// Admit.
    Allow,
    /// Decide with an in-memory limiter giving each node `limit / nodes`.
    Local,
}

/// A policy with its name and where its key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPolicy {
    /// The name requests and headers use.
    pub name: String,
    /// Algorithm, limit, period, burst.
    pub policy: Policy,
    /// What a protected request is counted under.
    pub key: KeySource,
}

/// `key = …` of a policy: what a protected request is counted under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The client IP and the user agent, `<ip>_<user agent>` (the seed's key).
    Client,
    /// The client IP.
    Ip,
    /// A request header's value.
    Header(String),
    /// One key for everyone.
    Global,
}

/// `[protect]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protect {
    /// Policies every protected request is checked against, stacked.
    pub policies: Vec<String>,
    /// Where admitted requests go; the demo handler answers when `None`.
    pub upstream: Option<String>,
}

/// The seed's `RATE_LIMITER_ALGORITHM` presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Memory store; per-client token_bucket 1 per 15 s; global 15 per 15 s.
    InMemoryTokenBucket,
    /// Redis; per-client token_bucket 1 per 5 s; global 5 per 5 s.
    RedisTokenBucket,
    /// Redis; global sliding_window_log 5 per 5 s.
    SlidingWindow,
    /// Redis; global leaky_bucket 1 per 5 s, burst 5.
    LeakingBucketQueue,
}

impl Preset {
    /// All presets, by their seed names.
    pub const ALL: [(&'static str, Preset); 4] = [
        ("in_memory_token_bucket", Preset::InMemoryTokenBucket),
        ("redis_token_bucket", Preset::RedisTokenBucket),
        ("sliding_window", Preset::SlidingWindow),
        ("leaking_bucket_queue", Preset::LeakingBucketQueue),
    ];

    /// The seed name.
    pub fn name(self) -> &'static str {
        Preset::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .unwrap_or("in_memory_token_bucket")
    }

    fn uses_redis(self) -> bool {
        !matches!(self, Preset::InMemoryTokenBucket)
    }

    fn policies(self) -> Vec<NamedPolicy> {
        let secs = Duration::from_secs;
        let make = |name: &str, algorithm, limit, period, burst: Option<u32>, key| {
            let p = Policy::new(algorithm, limit, period).and_then(|p| match burst {
                Some(b) => p.with_burst(b),
                None => Ok(p),
            });
            // The presets' numbers are constants that make valid policies.
            p.ok().map(|policy| NamedPolicy {
                name: name.to_owned(),
                policy,
                key,
            })
        };
        let all = match self {
            Preset::InMemoryTokenBucket => vec![
                make(
                    "per-client",
                    Algorithm::TokenBucket,
                    1,
                    secs(15),
                    None,
                    KeySource::Client,
                ),
                make(
                    "global",
                    Algorithm::TokenBucket,
                    15,
                    secs(15),
                    None,
                    KeySource::Global,
                ),
            ],
            Preset::RedisTokenBucket => vec![
                make(
                    "per-client",
                    Algorithm::TokenBucket,
                    1,
                    secs(5),
                    None,
                    KeySource::Client,
                ),
                make(
                    "global",
                    Algorithm::TokenBucket,
                    5,
                    secs(5),
                    None,
                    KeySource::Global,
                ),
            ],
            Preset::SlidingWindow => vec![make(
                "global",
                Algorithm::SlidingWindowLog,
                5,
                secs(5),
                None,
                KeySource::Global,
            )],
            Preset::LeakingBucketQueue => vec![make(
                "global",
                Algorithm::LeakyBucket,
                1,
                secs(5),
                Some(5),
                KeySource::Global,
            )],
        };
        all.into_iter().flatten().collect()
    }
}

/// A configuration error: where (file and line, the environment, or a flag), which
/// field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, `environment` or `command line`.
    pub origin: String,
    /// The line in the file, when known.
    pub line: Option<usize>,
    /// The field, e.g. `policy[2].period` or `PORT`.
    pub field: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.origin, line, self.field, self.message
            ),
            None => write!(f, "{}: {}: {}", self.origin, self.field, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Flags that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--port`.
    pub port: Option<u16>,
}

// The file, as written. Unknown fields are errors (a typo must not be ignored).

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    policy: Vec<PolicySection>,
    protect: Option<ProtectSection>,
    envoy: Option<EnvoySection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvoySection {
    listen: Option<Spanned<String>>,
    config_dir: Option<Spanned<String>>,
    shadow_mode: Option<bool>,
    reload_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<Spanned<String>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    admin_token: Option<String>,
    max_key_len: Option<Spanned<i64>>,
    max_body_bytes: Option<Spanned<i64>>,
    workers: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_client: Option<Spanned<i64>>,
    admin_listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    url: Option<Spanned<String>>,
    on_error: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    nodes: Option<Spanned<i64>>,
    breaker_failures: Option<Spanned<i64>>,
    breaker_cooldown: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
    max_keys: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    name: Spanned<String>,
    algorithm: Spanned<String>,
    limit: Spanned<i64>,
    period: Spanned<String>,
    burst: Option<Spanned<i64>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectSection {
    policies: Option<Vec<Spanned<String>>>,
    upstream: Option<Spanned<String>>,
}

/// Reads a file's text and turns byte offsets into line numbers for errors.
struct Source<'a> {
    origin: String,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text
            .get(..offset.min(self.text.len()))
            .map_or(1, |before| {
                before.bytes().filter(|&b| b == b'\n').count() + 1
            })
    }

    fn error<T>(
        &self,
        field: impl Into<String>,
        at: &Spanned<T>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            line: Some(self.line(at.span().start)),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn env_error(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        origin: "environment".to_owned(),
        line: None,
        field: field.to_owned(),
        message: message.into(),
    }
}

fn default_store(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        on_error: OnErrorMode::Local,
        timeout: Duration::from_millis(50),
        nodes: 1,
        breaker_failures: tollgate_redis::DEFAULT_BREAKER_FAILURES,
        breaker_cooldown: tollgate_redis::DEFAULT_BREAKER_COOLDOWN,
        key_prefix: "tollgate:".to_owned(),
        max_keys: 1_000_000,
    }
}

/// Builds the effective configuration from the flags, the environment `env` (the
/// process's, in the binary) and the file the flags or `TOLLGATE_CONFIG` name.
pub fn load(flags: &Flags, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let path = flags.config.clone().or_else(|| {
        env.get("TOLLGATE_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let mut config = match &path {
        Some(path) => from_file(path)?,
        None => from_preset(Preset::InMemoryTokenBucket),
    };
    apply_env(&mut config, env)?;
    if let Some(port) = flags.port {
        config.listen.set_port(port);
    }
    check_references(&config)?;
    check_envoy(&mut config)?;
    Ok(config)
}

/// Loads the Envoy configuration directory as `serve` will (with the store's
/// bounds), so its errors stop start-up and `check-config` with the YAML file, line
/// and field; records the domains found.
pub fn check_envoy(config: &mut Config) -> Result<(), ConfigError> {
    let options = envoy_options(config);
    let Some(envoy) = &mut config.envoy else {
        return Ok(());
    };
    let set = tollgate_envoy::load_dir(
        &envoy.config_dir,
        &options,
        &tollgate_envoy::EnvoyMetrics::new(),
    )
    .map_err(envoy_error)?;
    envoy.domains = set
        .domain_names()
        .into_iter()
        .map(|d| (d.to_owned(), set.domain(d).map_or(0, |x| x.rules())))
        .collect();
    Ok(())
}

/// What the Envoy rules must fit (the Redis store holds periods up to 2^52 ns), and
/// the named policies they may share with the HTTP API.
pub fn envoy_options(config: &Config) -> tollgate_envoy::LoadOptions {
    tollgate_envoy::LoadOptions {
        max_duration: (config.store.url != "memory://").then_some(tollgate_redis::MAX_DURATION),
        policies: config
            .policies
            .iter()
            .map(|p| (p.name.clone(), p.policy))
            .collect(),
    }
}

/// An error of the Envoy YAML files as a configuration error.
pub fn envoy_error(e: tollgate_envoy::ConfigError) -> ConfigError {
    ConfigError {
        origin: e.file,
        line: e.line,
        field: e.field,
        message: e.message,
    }
}

fn from_preset(preset: Preset) -> Config {
    let url = if preset.uses_redis() {
        "redis://localhost:6379/0"
    } else {
        "memory://"
    };
    let policies = preset.policies();
    Config {
        listen: DEFAULT_LISTEN,
        trusted_proxies: Vec::new(),
        admin_token: None,
        max_key_len: 256,
        max_body_bytes: 64 * 1024,
        workers: 0,
        max_connections: 10_000,
        max_connections_per_client: 0,
        admin_listen: None,
        store: default_store(url),
        protect: Protect {
            policies: policies.iter().map(|p| p.name.clone()).collect(),
            upstream: None,
        },
        policies,
        preset: Some(preset),
        notes: Vec::new(),
        envoy: None,
    }
}

/// Reads and checks a configuration file.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: None,
        field: "(file)".to_owned(),
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let mut config = from_text(&origin, &text)?;
    check_envoy(&mut config)?;
    Ok(config)
}

/// Reads configuration from TOML text; `origin` names it in errors.
pub fn from_text(origin: &str, text: &str) -> Result<Config, ConfigError> {
    let src = Source {
        origin: origin.to_owned(),
        text,
    };
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| src.line(s.start));
        ConfigError {
            origin: origin.to_owned(),
            line,
            field: field_of(e.message()),
            message: e.message().trim().to_owned(),
        }
    })?;
    let mut config = from_preset(Preset::InMemoryTokenBucket);

    let s = &file.server;
    if let Some(listen) = &s.listen {
        config.listen = listen.get_ref().parse().map_err(|_| {
            src.error(
                "server.listen",
                listen,
                format!(
                    "{:?} is not an address and port, such as \"127.0.0.1:8000\"",
                    listen.get_ref()
                ),
            )
        })?;
    }
    if let Some(proxies) = &s.trusted_proxies {
        config.trusted_proxies = proxies
            .iter()
            .map(|p| parse_cidr(p.get_ref()).map_err(|m| src.error("server.trusted_proxies", p, m)))
            .collect::<Result<_, _>>()?;
    }
    config.admin_token = s.admin_token.clone().filter(|t| !t.is_empty());
    if let Some(n) = &s.max_key_len {
        config.max_key_len =
            positive(n, 1..=65_536).map_err(|m| src.error("server.max_key_len", n, m))?;
    }
    if let Some(n) = &s.workers {
        config.workers =
            positive(n, 0..=MAX_WORKERS).map_err(|m| src.error("server.workers", n, m))?;
    }
    if let Some(n) = &s.max_connections {
        config.max_connections =
            positive(n, 1..=1_000_000).map_err(|m| src.error("server.max_connections", n, m))?;
    }
    if let Some(n) = &s.max_connections_per_client {
        config.max_connections_per_client = positive(n, 0..=1_000_000)
            .map_err(|m| src.error("server.max_connections_per_client", n, m))?;
    }
    if let Some(n) = &s.max_body_bytes {
        config.max_body_bytes = positive(n, 64..=16 * 1024 * 1024)
            .map_err(|m| src.error("server.max_body_bytes", n, m))?;
    }
    if let Some(at) = &s.admin_listen {
        config.admin_listen = parse_admin_listen(at.get_ref())
            .map_err(|m| src.error("server.admin_listen", at, m))?;
    }

    let st = &file.store;
    if let Some(url) = &st.url {
        check_url(url.get_ref()).map_err(|m| src.error("store.url", url, m))?;
        config.store.url = url.get_ref().clone();
    }
    if let Some(mode) = &st.on_error {
        config.store.on_error =
            parse_on_error(mode.get_ref()).map_err(|m| src.error("store.on_error", mode, m))?;
    }
    if let Some(t) = &st.timeout {
        config.store.timeout =
            parse_timeout(t.get_ref()).map_err(|m| src.error("store.timeout", t, m))?;
    }
    if let Some(n) = &st.nodes {
        config.store.nodes = positive(n, 1..=100_000)
            .map(|v| v as u32)
            .map_err(|m| src.error("store.nodes", n, m))?;
    }
    if let Some(n) = &st.breaker_failures {
        config.store.breaker_failures = positive(n, 0..=1_000_000)
            .map(|v| v as u32)
            .map_err(|m| src.error("store.breaker_failures", n, m))?;
    }
    if let Some(t) = &st.breaker_cooldown {
        config.store.breaker_cooldown =
            parse_cooldown(t.get_ref()).map_err(|m| src.error("store.breaker_cooldown", t, m))?;
    }
    if let Some(p) = &st.key_prefix {
        if p.get_ref().contains(['{', '}']) {
            return Err(src.error(
                "store.key_prefix",
                p,
                format!(
                    "{:?} holds a brace: braces are reserved for the hash tag",
                    p.get_ref()
                ),
            ));
        }
        config.store.key_prefix = p.get_ref().clone();
    }
    if let Some(n) = &st.max_keys {
        config.store.max_keys =
            positive(n, 1..=1_000_000_000).map_err(|m| src.error("store.max_keys", n, m))?;
    }

    if !file.policy.is_empty() {
        config.preset = None;
        config.policies.clear();
        for (i, p) in file.policy.iter().enumerate() {
            let at = |f: &str| format!("policy[{i}].{f}");
            let name = p.name.get_ref();
            check_name(name).map_err(|m| src.error(at("name"), &p.name, m))?;
            if config.policies.iter().any(|q| &q.name == name) {
                return Err(src.error(
                    at("name"),
                    &p.name,
                    format!("policy {name:?} is defined twice"),
                ));
            }
            let algorithm: Algorithm = p.algorithm.get_ref().parse().map_err(|_| {
                src.error(
                    at("algorithm"),
                    &p.algorithm,
                    format!(
                        "unknown algorithm {:?}: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket",
                        p.algorithm.get_ref()
                    ),
                )
            })?;
            let limit = positive(&p.limit, 1..=u32::MAX as usize)
                .map_err(|m| src.error(at("limit"), &p.limit, m))?;
            let period = parse_duration(p.period.get_ref())
                .map_err(|e| src.error(at("period"), &p.period, e.to_string()))?;
            let mut policy = Policy::new(algorithm, limit as u32, period)
                .map_err(|e| src.error(at("period"), &p.period, e.to_string()))?;
            if let Some(b) = &p.burst {
                let burst =
                    positive(b, 1..=u32::MAX as usize).map_err(|m| src.error(at("burst"), b, m))?;
                policy = policy
                    .with_burst(burst as u32)
                    .map_err(|e| src.error(at("burst"), b, e.to_string()))?;
            }
            let key = match &p.key {
                Some(k) => parse_key(k.get_ref()).map_err(|m| src.error(at("key"), k, m))?,
                None => KeySource::Client,
            };
            config.policies.push(NamedPolicy {
                name: name.clone(),
                policy,
                key,
            });
        }
        config.protect.policies = config.policies.iter().map(|p| p.name.clone()).collect();
    }

    if let Some(protect) = &file.protect {
        if let Some(names) = &protect.policies {
            config.protect.policies.clear();
            for n in names {
                if !config.policies.iter().any(|p| &p.name == n.get_ref()) {
                    return Err(src.error(
                        "protect.policies",
                        n,
                        format!(
                            "no policy is named {:?}; defined: {}",
                            n.get_ref(),
                            config
                                .policies
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                config.protect.policies.push(n.get_ref().clone());
            }
        }
        if let Some(up) = &protect.upstream {
            let up_text = up.get_ref().trim();
            if !up_text.is_empty() {
                check_upstream(up_text).map_err(|m| src.error("protect.upstream", up, m))?;
                config.protect.upstream = Some(up_text.trim_end_matches('/').to_owned());
            }
        }
    }
    if let Some(e) = &file.envoy {
        let mut envoy = EnvoyConfig {
            listen: DEFAULT_ENVOY_LISTEN,
            config_dir: PathBuf::new(),
            shadow_mode: e.shadow_mode.unwrap_or(false),
            reload_interval: tollgate_envoy::reload::DEFAULT_INTERVAL,
            domains: Vec::new(),
        };
        if let Some(listen) = &e.listen {
            envoy.listen = listen.get_ref().parse().map_err(|_| {
                src.error(
                    "envoy.listen",
                    listen,
                    format!(
                        "{:?} is not an address and port, such as \"127.0.0.1:8081\"",
                        listen.get_ref()
                    ),
                )
            })?;
        }
        match &e.config_dir {
            Some(dir) if !dir.get_ref().trim().is_empty() => {
                envoy.config_dir = PathBuf::from(dir.get_ref());
            }
            Some(dir) => {
                return Err(src.error(
                    "envoy.config_dir",
                    dir,
                    "config_dir is empty: name a directory of envoyproxy/ratelimit YAML files",
                ));
            }
            None => {
                return Err(ConfigError {
                    origin: origin.to_owned(),
                    line: None,
                    field: "envoy.config_dir".to_owned(),
                    message:
                        "[envoy] needs config_dir, a directory of envoyproxy/ratelimit YAML files"
                            .to_owned(),
                });
            }
        }
        if let Some(t) = &e.reload_interval {
            envoy.reload_interval = parse_reload_interval(t.get_ref())
                .map_err(|m| src.error("envoy.reload_interval", t, m))?;
        }
        config.envoy = Some(envoy);
    }
    Ok(config)
}

fn parse_reload_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| e.to_string())?;
    let d = Duration::from_nanos(d.as_u64());
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is out of range: expected 10ms to 1h"));
    }
    Ok(d)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The field a toml error message is about, when it names one.
fn field_of(message: &str) -> String {
    // toml's messages read like "unknown field `listn`, expected one of ..." or
    // "invalid type: ..., expected ... for key `store.nodes`".
    if let Some(start) = message.find('`')
        && let Some(len) = message[start + 1..].find('`')
    {
        return message[start + 1..start + 1 + len].to_owned();
    }
    "(syntax)".to_owned()
}

fn positive(n: &Spanned<i64>, range: std::ops::RangeInclusive<usize>) -> Result<usize, String> {
    let v = *n.get_ref();
    usize::try_from(v)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            format!(
                "{v} is out of range: expected {} to {}",
                range.start(),
                range.end()
            )
        })
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR such as \"10.0.0.0/8\""))
}

fn parse_on_error(text: &str) -> Result<OnErrorMode, String> {
    match text {
        "deny" => Ok(OnErrorMode::Deny),
        "allow" => Ok(OnErrorMode::Allow),
        "local" => Ok(OnErrorMode::Local),
        other => Err(format!(
            "unknown mode {other:?}: expected deny, allow or local"
        )),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| e.to_string())?;
    let d = Duration::from_nanos(d.as_u64());
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(format!(
            "{text:?} is out of range: expected more than 0 and at most 60s"
        ));
    }
    Ok(d)
}

fn parse_cooldown(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| e.to_string())?;
    let d = Duration::from_nanos(d.as_u64());
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{text:?} is out of range: expected at least 10ms and at most 1h"
        ));
    }
    Ok(d)
}

fn check_url(url: &str) -> Result<(), String> {
    if url == "memory://" {
        return Ok(());
    }
    for scheme in [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            if rest.is_empty() {
                return Err(format!("{url:?} names no host"));
            }
            return Ok(());
        }
    }
    Err(format!(
        "{url:?} is not a store url: expected memory://, redis://host:port/db, rediss://… or redis+cluster://h1:p1,h2:p2"
    ))
}

fn check_upstream(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?} is not an http:// URL (the proxy speaks plain HTTP to its upstream)")
    })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?}: a policy name has 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} holds {c:?}: use letters, digits, '-', '_' and '.'"
        ));
    }
    if name.starts_with(crate::api::INLINE_PREFIX) {
        // The decision API names inline policies this way, and their keys are
        // `<name>:<key>`: a named policy here would share its counters with any
        // client's inline policy of the same name.
        return Err(format!(
            "{name:?} starts with {:?}, which is reserved for the decision API's inline policies",
            crate::api::INLINE_PREFIX
        ));
    }
    Ok(())
}

fn parse_key(text: &str) -> Result<KeySource, String> {
    match text {
        "client" => Ok(KeySource::Client),
        "ip" => Ok(KeySource::Ip),
        "global" => Ok(KeySource::Global),
        _ => match text.strip_prefix("header:") {
            Some(h) if !h.is_empty() && http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                Ok(KeySource::Header(h.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "{text:?}: expected client, ip, global or header:NAME"
            )),
        },
    }
}

fn apply_env(config: &mut Config, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(name) = get("RATE_LIMITER_ALGORITHM") {
        let preset = Preset::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                env_error(
                    "RATE_LIMITER_ALGORITHM",
                    format!(
                        "unknown value {name:?}: expected in_memory_token_bucket, redis_token_bucket, sliding_window or leaking_bucket_queue"
                    ),
                )
            })?;
        let fresh = from_preset(preset);
        config.policies = fresh.policies;
        config.protect.policies = fresh.protect.policies;
        config.preset = Some(preset);
        if preset.uses_redis() != config.store.url.starts_with("redis") {
            config.store.url = fresh.store.url;
        }
    }
    let redis_vars = ["REDIS_HOST", "REDIS_PORT", "REDIS_DB"];
    if redis_vars.iter().any(|v| get(v).is_some()) {
        let host = get("REDIS_HOST").unwrap_or("localhost");
        let port: u16 = match get("REDIS_PORT") {
            Some(p) => p
                .parse()
                .map_err(|_| env_error("REDIS_PORT", format!("{p:?} is not a port number")))?,
            None => 6379,
        };
        let db: u32 = match get("REDIS_DB") {
            Some(d) => d
                .parse()
                .map_err(|_| env_error("REDIS_DB", format!("{d:?} is not a database number")))?,
            None => 0,
        };
        if config.store.url.starts_with("redis://") {
            config.store.url = format!("redis://{host}:{port}/{db}");
        } else {
            config.notes.push(format!(
                "REDIS_HOST, REDIS_PORT and REDIS_DB are ignored: the store is {} (set RATE_LIMITER_ALGORITHM to a Redis preset, or store.url)",
                config.store.url
            ));
        }
    }
    if let Some(url) = get("TOLLGATE_STORE_URL") {
        check_url(url).map_err(|m| env_error("TOLLGATE_STORE_URL", m))?;
        config.store.url = url.to_owned();
    }
    if let Some(prefix) = get("TOLLGATE_KEY_PREFIX") {
        if prefix.contains(['{', '}']) {
            return Err(env_error(
                "TOLLGATE_KEY_PREFIX",
                format!("{prefix:?} holds a brace: braces are reserved for the hash tag"),
            ));
        }
        config.store.key_prefix = prefix.to_owned();
    }
    if let Some(listen) = get("TOLLGATE_LISTEN") {
        config.listen = listen.parse().map_err(|_| {
            env_error(
                "TOLLGATE_LISTEN",
                format!("{listen:?} is not an address and port, such as \"0.0.0.0:8000\""),
            )
        })?;
    }
    if let Some(port) = get("PORT") {
        let port: u16 = port
            .parse()
            .map_err(|_| env_error("PORT", format!("{port:?} is not a port number")))?;
        config.listen.set_port(port);
    }
    if let Some(workers) = get("TOLLGATE_WORKERS") {
        config.workers = workers
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_WORKERS)
            .ok_or_else(|| {
                env_error(
                    "TOLLGATE_WORKERS",
                    format!(
                        "{workers:?} is not a number of worker threads from 0 (automatic: two per core) to {MAX_WORKERS}"
                    ),
                )
            })?;
    }
    if let Some(at) = get("TOLLGATE_ADMIN_LISTEN") {
        config.admin_listen =
            parse_admin_listen(at).map_err(|m| env_error("TOLLGATE_ADMIN_LISTEN", m))?;
    }
    if let Some(token) = get("TOLLGATE_ADMIN_TOKEN") {
        config.admin_token = Some(token.to_owned());
    }
    let envoy_vars = [
        "TOLLGATE_ENVOY_LISTEN",
        "TOLLGATE_ENVOY_CONFIG_DIR",
        "TOLLGATE_ENVOY_SHADOW_MODE",
    ];
    if envoy_vars.iter().any(|v| get(v).is_some()) {
        let envoy = config.envoy.get_or_insert_with(|| EnvoyConfig {
            listen: DEFAULT_ENVOY_LISTEN,
            config_dir: PathBuf::new(),
            shadow_mode: false,
            reload_interval: tollgate_envoy::reload::DEFAULT_INTERVAL,
            domains: Vec::new(),
        });
        if let Some(listen) = get("TOLLGATE_ENVOY_LISTEN") {
            envoy.listen = listen.parse().map_err(|_| {
                env_error(
                    "TOLLGATE_ENVOY_LISTEN",
                    format!("{listen:?} is not an address and port, such as \"0.0.0.0:8081\""),
                )
            })?;
        }
        if let Some(dir) = get("TOLLGATE_ENVOY_CONFIG_DIR") {
            envoy.config_dir = PathBuf::from(dir);
        }
        if let Some(on) = get("TOLLGATE_ENVOY_SHADOW_MODE") {
            envoy.shadow_mode = parse_bool(on).ok_or_else(|| {
                env_error(
                    "TOLLGATE_ENVOY_SHADOW_MODE",
                    format!("{on:?} is not true or false"),
                )
            })?;
        }
        if envoy.config_dir.as_os_str().is_empty() {
            return Err(env_error(
                "TOLLGATE_ENVOY_CONFIG_DIR",
                "the Envoy listener needs a directory of envoyproxy/ratelimit YAML files",
            ));
        }
    }
    if get("MASTER_NODE").is_some() {
        config.notes.push(
            "MASTER_NODE is accepted and ignored: tollgate computes refills from the time inside each decision, so no node refills tokens".to_owned(),
        );
    }
    if env.keys().any(|k| k.starts_with("ACTIVEMQ_")) {
        config.notes.push(
            "ACTIVEMQ_* settings are accepted and ignored: the leaky bucket's queue is kept in the store, not in a message broker".to_owned(),
        );
    }
    Ok(())
}

fn check_references(config: &Config) -> Result<(), ConfigError> {
    for name in &config.protect.policies {
        if !config.policies.iter().any(|p| &p.name == name) {
            return Err(ConfigError {
                origin: "configuration".to_owned(),
                line: None,
                field: "protect.policies".to_owned(),
                message: format!("no policy is named {name:?}"),
            });
        }
    }
    Ok(())
}

/// `server.admin_listen`: an address and port, or empty for none.
fn parse_admin_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!("{text:?} is not an address and port, such as \"0.0.0.0:9000\" (or \"\" for none)")
    })
}

/// The effective configuration as TOML, for `tollgate check-config`.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    let q = toml_string;
    out.push_str("[server]\n");
    out.push_str(&format!("listen = {}\n", q(&config.listen.to_string())));
    let proxies: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(|p| q(&p.to_string()))
        .collect();
    out.push_str(&format!("trusted_proxies = [{}]\n", proxies.join(", ")));
    out.push_str(&format!(
        "admin_token = {}\n",
        if config.admin_token.is_some() {
            q("(set)")
        } else {
            q("")
        }
    ));
    out.push_str(&format!("max_key_len = {}\n", config.max_key_len));
    out.push_str(&format!("max_body_bytes = {}\n", config.max_body_bytes));
    out.push_str(&format!("workers = {}\n", config.workers));
    out.push_str(&format!("max_connections = {}\n", config.max_connections));
    out.push_str(&format!(
        "max_connections_per_client = {}\n",
        config.max_connections_per_client
    ));
    out.push_str(&format!(
        "admin_listen = {}\n\n",
        q(&config
            .admin_listen
            .map(|a| a.to_string())
            .unwrap_or_default())
    ));
    let s = &config.store;
    out.push_str("[store]\n");
    out.push_str(&format!("url = {}\n", q(&redact(&s.url))));
    let mode = match s.on_error {
        OnErrorMode::Deny => "deny",
        OnErrorMode::Allow => "allow",
        OnErrorMode::Local => "local",
    };
    out.push_str(&format!("on_error = {}\n", q(mode)));
    out.push_str(&format!(
        "timeout = {}\n",
        q(&format!("{}ms", s.timeout.as_millis()))
    ));
    out.push_str(&format!("nodes = {}\n", s.nodes));
    out.push_str(&format!("breaker_failures = {}\n", s.breaker_failures));
    out.push_str(&format!(
        "breaker_cooldown = {}\n",
        q(&format!("{}ms", s.breaker_cooldown.as_millis()))
    ));
    out.push_str(&format!("key_prefix = {}\n", q(&s.key_prefix)));
    out.push_str(&format!("max_keys = {}\n", s.max_keys));
    for p in &config.policies {
        out.push_str("\n[[policy]]\n");
        out.push_str(&format!("name = {}\n", q(&p.name)));
        out.push_str(&format!("algorithm = {}\n", q(p.policy.algorithm().name())));
        out.push_str(&format!("limit = {}\n", p.policy.limit()));
        out.push_str(&format!(
            "period = {}\n",
            q(&format_duration(p.policy.period().as_u64()))
        ));
        out.push_str(&format!("burst = {}\n", p.policy.burst()));
        let key = match &p.key {
            KeySource::Client => "client".to_owned(),
            KeySource::Ip => "ip".to_owned(),
            KeySource::Global => "global".to_owned(),
            KeySource::Header(h) => format!("header:{h}"),
        };
        out.push_str(&format!("key = {}\n", q(&key)));
    }
    out.push_str("\n[protect]\n");
    let names: Vec<String> = config.protect.policies.iter().map(|n| q(n)).collect();
    out.push_str(&format!("policies = [{}]\n", names.join(", ")));
    out.push_str(&format!(
        "upstream = {}\n",
        q(config.protect.upstream.as_deref().unwrap_or(""))
    ));
    if let Some(e) = &config.envoy {
        out.push_str("\n[envoy]\n");
        out.push_str(&format!("listen = {}\n", q(&e.listen.to_string())));
        out.push_str(&format!(
            "config_dir = {}\n",
            q(&e.config_dir.display().to_string())
        ));
        out.push_str(&format!("shadow_mode = {}\n", e.shadow_mode));
        out.push_str(&format!(
            "reload_interval = {}\n",
            q(&format_duration(
                u64::try_from(e.reload_interval.as_nanos()).unwrap_or(u64::MAX)
            ))
        ));
        for (domain, rules) in &e.domains {
            out.push_str(&format!("# domain {}: {rules} rate limits\n", q(domain)));
        }
    }
    out
}

/// `s` as a TOML basic string: `"` and `\` escaped, control characters as
/// `\uXXXX`. (Rust's `{:?}` writes `\u{87}`, which TOML does not read: the fuzz
/// target `config` found a URL holding U+0087 whose rendering was invalid.)
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                // Writing to a String cannot fail.
                let _ = fmt::Write::write_fmt(&mut out, format_args!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration in the largest unit that divides it: `15s`, `500ms`, `1h`.
pub fn format_duration(ns: u64) -> String {
    for (unit, size) in [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// A URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_file_no_env_is_the_seed_default() {
        let c = load(&Flags::default(), &env(&[])).expect("default");
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.store.url, "memory://");
        assert_eq!(c.preset, Some(Preset::InMemoryTokenBucket));
        assert_eq!(c.protect.policies, ["per-client", "global"]);
        assert_eq!(c.policies[0].policy.limit(), 1);
        assert_eq!(c.policies[0].policy.period().as_u64(), 15_000_000_000);
        assert_eq!(c.policies[1].policy.limit(), 15);
    }

    #[test]
    fn presets_follow_the_design_table() {
        for (name, preset) in Preset::ALL {
            let c = load(&Flags::default(), &env(&[("RATE_LIMITER_ALGORITHM", name)])).expect(name);
            assert_eq!(c.preset, Some(preset));
            assert_eq!(
                c.store.url.starts_with("redis://localhost:6379/0"),
                preset.uses_redis(),
                "{name}"
            );
        }
        let c = load(
            &Flags::default(),
            &env(&[("RATE_LIMITER_ALGORITHM", "leaking_bucket_queue")]),
        )
        .expect("preset");
        let p = &c.policies[0];
        assert_eq!(
            (
                p.name.as_str(),
                p.policy.algorithm(),
                p.policy.limit(),
                p.policy.burst()
            ),
            ("global", Algorithm::LeakyBucket, 1, 5)
        );
        let c = load(
            &Flags::default(),
            &env(&[("RATE_LIMITER_ALGORITHM", "sliding_window")]),
        )
        .expect("preset");
        assert_eq!(
            c.policies[0].policy.algorithm(),
            Algorithm::SlidingWindowLog
        );
    }

    #[test]
    fn redis_variables_build_the_url_and_seed_leftovers_are_noted() {
        let c = load(
            &Flags::default(),
            &env(&[
                ("RATE_LIMITER_ALGORITHM", "redis_token_bucket"),
                ("REDIS_HOST", "cache"),
                ("REDIS_PORT", "6380"),
                ("REDIS_DB", "2"),
                ("MASTER_NODE", "true"),
                ("ACTIVEMQ_HOST", "mq"),
            ]),
        )
        .expect("config");
        assert_eq!(c.store.url, "redis://cache:6380/2");
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(c.notes[0].contains("MASTER_NODE"));
        assert!(c.notes[1].contains("ACTIVEMQ_"));
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let dir = std::env::temp_dir().join(format!("tollgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.toml");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:7000\"\n").expect("write");
        let flags = Flags {
            config: Some(path.clone()),
            port: None,
        };
        assert_eq!(load(&flags, &env(&[])).expect("file").listen.port(), 7000);
        assert_eq!(
            load(&flags, &env(&[("PORT", "7001")]))
                .expect("env")
                .listen
                .port(),
            7001
        );
        let flags = Flags {
            config: Some(path.clone()),
            port: Some(7002),
        };
        assert_eq!(
            load(&flags, &env(&[("PORT", "7001")]))
                .expect("flag")
                .listen
                .port(),
            7002
        );
        let flags = Flags {
            config: None,
            port: None,
        };
        let via_env = env(&[("TOLLGATE_CONFIG", path.to_str().expect("utf-8 path"))]);
        assert_eq!(
            load(&flags, &via_env)
                .expect("TOLLGATE_CONFIG")
                .listen
                .port(),
            7000
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_file_is_read() {
        let text = r#"
[server]
listen = "0.0.0.0:9000"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
admin_token = "s3cret"

[store]
url = "redis://127.0.0.1:6379/1"
on_error = "deny"
timeout = "20ms"
nodes = 4
breaker_failures = 0
breaker_cooldown = "250ms"
key_prefix = "tg:"

[[policy]]
name = "per-client"
algorithm = "gcra"
limit = 10
period = "1s"
burst = 20
key = "client"

[[policy]]
name = "api"
algorithm = "sliding_window_counter"
limit = 100
period = "1m"
key = "header:X-Api-Key"

[protect]
policies = ["per-client"]
upstream = "http://127.0.0.1:3000/"
"#;
        let c = from_text("t.toml", text).expect("valid");
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.store.on_error, OnErrorMode::Deny);
        assert_eq!(c.store.timeout, Duration::from_millis(20));
        assert_eq!(c.store.nodes, 4);
        assert_eq!(c.store.breaker_failures, 0);
        assert_eq!(c.store.breaker_cooldown, Duration::from_millis(250));
        assert_eq!(c.policies[0].policy.burst(), 20);
        assert_eq!(c.policies[1].key, KeySource::Header("x-api-key".into()));
        assert_eq!(c.protect.policies, ["per-client"]);
        assert_eq!(c.protect.upstream.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!(c.preset, None);
        // What check-config prints reads back to the same configuration.
        let again = from_text("rendered", &render(&c).replace("\"(set)\"", "\"s3cret\""))
            .expect("rendered");
        assert_eq!(again.policies, c.policies);
        assert_eq!(again.store, c.store);
        assert_eq!(again.protect, c.protect);
    }

    /// Found by the `config` fuzz target: a store URL holding U+0087 rendered as
    /// `\u{87}` (Rust's escape), which is not TOML, so check-config's output did not
    /// read back.
    #[test]
    fn render_escapes_control_characters_as_toml_reads_them() {
        let text = "[store]\nurl = \"redis://g.&h0.0.99Q1s://127.0.0.1:6379\u{87}-api-key\"\nkey_prefix = \"tab\\there \\\"quoted\\\" back\\\\slash \\u0007 \\u007f \u{e9}\"\n";
        let c = from_text("t.toml", text).expect("valid");
        let rendered = render(&c);
        assert!(rendered.contains("\\u0087"), "{rendered}");
        let again = from_text("rendered", &rendered).expect("the rendering reads back");
        assert_eq!(again.store, c.store);
        assert_eq!(again.policies, c.policies);
        assert_eq!(render(&again), rendered);
    }

    #[test]
    fn the_envoy_table_and_its_variables() {
        let c = from_text(
            "e.toml",
            "[envoy]\nconfig_dir = \"/etc/ratelimit\"\nshadow_mode = true\n",
        )
        .expect("valid");
        let e = c.envoy.clone().expect("on");
        assert_eq!(e.listen, DEFAULT_ENVOY_LISTEN);
        assert_eq!(e.config_dir, PathBuf::from("/etc/ratelimit"));
        assert!(e.shadow_mode);
        assert_eq!(e.reload_interval, tollgate_envoy::reload::DEFAULT_INTERVAL);
        let again = from_text("rendered", &render(&c)).expect("the rendering reads back");
        assert_eq!(again.envoy, c.envoy);
        assert!(from_text("e.toml", "").expect("valid").envoy.is_none());
        let cases = [
            (
                "[envoy]\nlisten = \"nowhere\"\nconfig_dir = \"d\"\n",
                Some(2),
                "envoy.listen",
            ),
            (
                "[envoy]\nlisten = \"127.0.0.1:1\"\n",
                None,
                "envoy.config_dir",
            ),
            ("[envoy]\nconfig_dir = \"\"\n", Some(2), "envoy.config_dir"),
            (
                "[envoy]\nconfig_dir = \"d\"\nreload_interval = \"1ms\"\n",
                Some(3),
                "envoy.reload_interval",
            ),
            ("[envoy]\nconfig_dri = \"d\"\n", Some(2), "config_dri"),
        ];
        for (text, line, field) in cases {
            let e = from_text("e.toml", text).expect_err(text);
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text}: {e}");
        }
        // The environment turns it on; the directory must exist and load.
        let dir = std::env::temp_dir().join(format!("tollgate-envoy-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("a.yaml"), "domain: a\n").expect("write");
        let dir_text = dir.to_str().expect("utf-8");
        let c = load(
            &Flags::default(),
            &env(&[
                ("TOLLGATE_ENVOY_CONFIG_DIR", dir_text),
                ("TOLLGATE_ENVOY_LISTEN", "0.0.0.0:9081"),
            ]),
        )
        .expect("valid");
        let e = c.envoy.expect("on");
        assert_eq!(e.listen.to_string(), "0.0.0.0:9081");
        assert_eq!(e.domains, [("a".to_owned(), 0)]);
        for (vars, field) in [
            (
                vec![("TOLLGATE_ENVOY_LISTEN", "0.0.0.0:9081")],
                "TOLLGATE_ENVOY_CONFIG_DIR",
            ),
            (
                vec![
                    ("TOLLGATE_ENVOY_CONFIG_DIR", dir_text),
                    ("TOLLGATE_ENVOY_SHADOW_MODE", "maybe"),
                ],
                "TOLLGATE_ENVOY_SHADOW_MODE",
            ),
        ] {
            let e = load(&Flags::default(), &env(&vars)).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let e = load(
            &Flags::default(),
            &env(&[("TOLLGATE_ENVOY_CONFIG_DIR", "/no/such/dir/anywhere")]),
        )
        .expect_err("missing dir");
        assert!(e.to_string().contains("cannot read the directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_listen_from_the_file_and_the_environment() {
        assert_eq!(from_text("a.toml", "").expect("valid").admin_listen, None);
        let c = from_text("a.toml", "[server]\nadmin_listen = \"0.0.0.0:9000\"\n").expect("valid");
        assert_eq!(c.admin_listen, Some("0.0.0.0:9000".parse().expect("addr")));
        let again = from_text("rendered", &render(&c)).expect("the rendering reads back");
        assert_eq!(again.admin_listen, c.admin_listen);
        let none = from_text("a.toml", "[server]\nadmin_listen = \"\"\n").expect("valid");
        assert_eq!(none.admin_listen, None);
        assert_eq!(
            from_text("rendered", &render(&none))
                .expect("reads back")
                .admin_listen,
            None
        );
        let e = from_text("a.toml", "[server]\n\nadmin_listen = \"9000\"\n").expect_err("no host");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("server.admin_listen", Some(3)),
            "{e}"
        );
        assert!(e.message.contains("\"9000\""), "{e}");
        let c = load(
            &Flags::default(),
            &env(&[("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:9100")]),
        )
        .expect("env");
        assert_eq!(
            c.admin_listen,
            Some("127.0.0.1:9100".parse().expect("addr"))
        );
        let e =
            load(&Flags::default(), &env(&[("TOLLGATE_ADMIN_LISTEN", "x:y")])).expect_err("bad");
        assert_eq!(e.field, "TOLLGATE_ADMIN_LISTEN", "{e}");
    }

    #[test]
    fn workers_from_the_file_and_the_environment() {
        assert_eq!(from_text("w.toml", "").expect("valid").workers, 0);
        let c = from_text(
            "w.toml",
            "[server]\nworkers = 3\nmax_connections = 64\nmax_connections_per_client = 8\n",
        )
        .expect("valid");
        assert_eq!(c.workers, 3);
        assert_eq!(c.max_connections, 64);
        assert_eq!(c.max_connections_per_client, 8);
        let again = from_text("rendered", &render(&c)).expect("the rendering reads back");
        assert_eq!(again.workers, 3);
        assert_eq!(again.max_connections, 64);
        assert_eq!(again.max_connections_per_client, 8);
        assert_eq!(
            from_text("w.toml", "")
                .expect("valid")
                .max_connections_per_client,
            0,
            "no per-client cap by default"
        );
        let e = from_text(
            "w.toml",
            "[server]\nworkers = 1\nmax_connections_per_client = -2\n",
        )
        .expect_err("negative");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("server.max_connections_per_client", Some(3)),
            "{e}"
        );
        let e = from_text("w.toml", "[server]\nmax_connections = 0\n").expect_err("zero");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("server.max_connections", Some(2)),
            "{e}"
        );
        let e = from_text("w.toml", "[server]\nworkers = -1\n").expect_err("negative");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("server.workers", Some(2)),
            "{e}"
        );
        let e = from_text("w.toml", "[server]\nworkers = 5000\n").expect_err("too many");
        assert_eq!(e.field, "server.workers", "{e}");
        let c = load(&Flags::default(), &env(&[("TOLLGATE_WORKERS", "5")])).expect("valid");
        assert_eq!(c.workers, 5);
        for bad in ["many", "-2", "1025"] {
            let e = load(&Flags::default(), &env(&[("TOLLGATE_WORKERS", bad)])).expect_err(bad);
            assert_eq!(e.field, "TOLLGATE_WORKERS", "{e}");
        }
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let cases = [
            (
                "[server]\nlisten = \"nowhere\"\n",
                2,
                "server.listen",
                "not an address",
            ),
            ("[store]\ntimeout = \"abc\"\n", 2, "store.timeout", "abc"),
            (
                "[store]\nbreaker_cooldown = \"1ms\"\n",
                2,
                "store.breaker_cooldown",
                "at least 10ms",
            ),
            (
                "[store]\n\nbreaker_failures = -3\n",
                3,
                "store.breaker_failures",
                "out of range",
            ),
            (
                "[store]\non_error = \"maybe\"\n",
                2,
                "store.on_error",
                "deny, allow or local",
            ),
            (
                "[[policy]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 0\nperiod = \"1s\"\n",
                4,
                "policy[0].limit",
                "out of range",
            ),
            (
                "[[policy]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 1\nperiod = \"abc\"\n",
                5,
                "policy[0].period",
                "abc",
            ),
            (
                "[[policy]]\nname = \"a\"\nalgorithm = \"magic\"\nlimit = 1\nperiod = \"1s\"\n",
                3,
                "policy[0].algorithm",
                "unknown algorithm",
            ),
            (
                "[[policy]]\nname = \"inline-gcra-10-1s-10\"\nalgorithm = \"gcra\"\nlimit = 10\nperiod = \"1s\"\n",
                2,
                "policy[0].name",
                "reserved for the decision API's inline policies",
            ),
            (
                "[[policy]]\nname = \"a:b\"\nalgorithm = \"gcra\"\nlimit = 1\nperiod = \"1s\"\n",
                2,
                "policy[0].name",
                "':'",
            ),
            (
                "[[policy]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 1\nperiod = \"1s\"\nkey = \"cookie\"\n",
                6,
                "policy[0].key",
                "header:NAME",
            ),
            (
                "[protect]\npolicies = [\"nope\"]\n",
                2,
                "protect.policies",
                "no policy is named \"nope\"",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n",
                3,
                "listn",
                "unknown field",
            ),
            ("[store]\nnodes = \"four\"\n", 2, "(syntax)", "invalid type"),
        ];
        for (text, line, field, words) in cases {
            let e = from_text("conf.toml", text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert_eq!(e.origin, "conf.toml");
            assert!(
                e.field == field || (field == "(syntax)" && !e.field.is_empty()),
                "{text}: field {:?}",
                e.field
            );
            assert!(e.to_string().contains(words), "{text}: {e}");
        }
        let e = load(&Flags::default(), &env(&[("PORT", "http")])).expect_err("bad PORT");
        assert_eq!(
            e.to_string(),
            "environment: PORT: \"http\" is not a port number"
        );
        let e = load(
            &Flags::default(),
            &env(&[("RATE_LIMITER_ALGORITHM", "bogus")]),
        )
        .expect_err("bad preset");
        assert!(e.to_string().contains("RATE_LIMITER_ALGORITHM"), "{e}");
    }
}
