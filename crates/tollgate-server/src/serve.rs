//! `tollgate serve`: load the configuration, connect the store, serve until SIGTERM
//! or SIGINT, then finish the requests in flight and exit.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tollgate::MemoryStore;
use tollgate_envoy::proto::rate_limit_service_server::RateLimitServiceServer;
use tollgate_envoy::{EnvoyMetrics, RateLimiter, RuleSet};
use tollgate_redis::RedisStore;

use crate::api;
use crate::app::{AppState, admin, app};
use crate::backend::{Backend, Guarded};
use crate::cli::ServeArgs;
use crate::clients::{ClientPlace, PerClient};
use crate::config::{self, Config, EnvoyConfig, Flags, redact};
use crate::grpc::{GrpcRoutes, GrpcService};

/// Why the server stopped early.
#[derive(Debug)]
pub enum ServeError {
    /// Invalid configuration (exit status 2).
    Config(config::ConfigError),
    /// The store, the listener or the runtime failed (exit status 1).
    Runtime(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(e) => write!(f, "invalid configuration: {e}"),
            ServeError::Runtime(e) => f.write_str(e),
        }
    }
}

impl ServeError {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::Runtime(_) => 1,
        }
    }
}

/// Loads the configuration from `flags` and the process environment.
pub fn configuration(flags: &Flags) -> Result<Config, ServeError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    config::load(flags, &env).map_err(ServeError::Config)
}

/// Connects the configured store.
pub async fn backend(config: &Config) -> Result<Backend, ServeError> {
    let s = &config.store;
    if s.url == "memory://" {
        return Ok(Backend::memory(
            MemoryStore::builder().max_keys(s.max_keys).build(),
        ));
    }
    // Lazy: the server starts while Redis is down (on_error answers, /readyz says 503)
    // and uses it once it is up. A cluster is connected now: its client needs the
    // slot map. A connection per thread: each worker's calls are batched, written
    // and answered on the worker's own thread (see `serve`).
    let store = RedisStore::builder(s.url.clone())
        .key_prefix(s.key_prefix.clone())
        .timeout(s.timeout)
        .circuit_breaker(s.breaker_failures, s.breaker_cooldown)
        .connect_timeout(Duration::from_secs(5))
        .lazy(true)
        .connection_per_thread(true)
        .connect()
        .await
        .map_err(|e| {
            ServeError::Runtime(format!("cannot use the store at {}: {e}", redact(&s.url)))
        })?;
    if let Err(e) = store.ping().await {
        tracing::warn!(
            store = %redact(&s.url),
            error = %e,
            "the store does not answer yet: /readyz answers 503 and on_error decides until it does"
        );
    }
    Ok(Backend::redis(store))
}

/// Runs the server until a shutdown signal.
///
/// The setup, the listeners' accept loops and the first worker run on this thread's
/// runtime; each further core gets a worker thread of its own (see [`serve`]).
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let flags = Flags {
        config: args.config.clone(),
        port: args.port,
    };
    let config = configuration(&flags)?;
    init_logs(args.log_json);
    let runtime = worker_runtime()?;
    runtime.block_on(serve(config, shutdown_signal()))
}

/// A worker's runtime: one thread, its own I/O driver and timers.
fn worker_runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(format!("cannot start the runtime: {e}")))
}

/// How many workers serve connections: `configured`, or when it is 0, two per core
/// this process may use (`available_parallelism` reads the CPU affinity mask and
/// the cgroup quota), whatever the store. Two per core, because the cores are
/// shared (with the application, a sidecar, a load generator) and a worker the OS
/// takes off its core holds its connections until it runs again: with twice the
/// workers each holds half as many, and another worker runs meanwhile. Measured with
/// wrk on two cores, two workers per core against one: about 1.2x the requests per
/// second and half the p99 latency; three per core was slower again. On Redis too
/// (each worker has its own Redis connection): interleaved wrk runs on two cores
/// with Redis beside the server, four workers against two, hot key 1.11x and 1.18x
/// the requests per second (medians of six 4 s runs), 100k keys 1.03x; six and
/// eight workers were slower than four. (On a machine busy with builds, two had
/// done better: the default was one per core on Redis for a while.)
fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) * 2
}

/// Serves `config` until `shutdown` completes, then drains.
///
/// # Threads
///
/// Workers (two per core unless `server.workers` says otherwise), each a thread
/// with a single-threaded runtime that owns the connections it is given: a
/// connection's requests are read, decided and answered on one thread, and a
/// request never wakes another thread (a work-stealing runtime wakes an idle worker
/// for nearly every request, which on a small machine costs more than the request
/// itself). The listeners are accepted on the calling runtime, which serves no
/// connection of theirs, so a burst of new connections is taken off the listen
/// backlog at once; it hands them to the workers in turn. It serves the admin
/// listener's few connections itself (see [`serve_admin`]). The store is shared by all of them.
/// On shutdown the accept loops stop, each worker lets its connections finish the
/// request in flight, and `serve` returns once every worker has.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    for note in &config.notes {
        tracing::info!("{note}");
    }
    let mut backend = backend(&config).await?;
    backend
        .metrics
        .prepare(config.policies.iter().map(|p| p.name.as_str()));
    let envoy = match &config.envoy {
        Some(e) => Some(envoy_rules(&config, e, &mut backend)?),
        None => None,
    };
    let listen = config.listen;
    let listener =
        bind(listen).map_err(|e| ServeError::Runtime(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Runtime(format!("cannot read the listening address: {e}")))?;
    let grpc_listener = config
        .envoy
        .as_ref()
        .map(|e| bind_for(e.listen, "the Envoy rate limit service"))
        .transpose()?;
    let admin_listener = config
        .admin_listen
        .map(|at| bind_for(at, "operations (server.admin_listen)"))
        .transpose()?;
    let workers = worker_count(config.workers);
    // One cap for both listeners.
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let state = Arc::new(AppState::new(config, backend));
    let router = app(Arc::clone(&state))
        .map_err(|e| ServeError::Runtime(format!("cannot build the protected routes: {e}")))?;
    let (grpc, health) = match envoy {
        Some(rules) => {
            let (routes, health) = grpc_routes(&state, rules).await;
            (Some(routes), Some(health))
        }
        None => (None, None),
    };

    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let runtime = worker_runtime()?;
        let (state, router, grpc) = (Arc::clone(&state), router.clone(), grpc.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{i}"))
            .spawn(move || runtime.block_on(worker(rx, state, router, grpc)))
            .map_err(|e| ServeError::Runtime(format!("cannot start worker thread {i}: {e}")))?;
        threads.push(thread);
    }
    drop(router);
    // Said once every worker is running: whoever waits for this line (a
    // supervisor, a test counting the process's descriptors) sees the server whole.
    tracing::info!(
        listen = %local,
        grpc_listen = %grpc_listener.as_ref().map_or_else(|| "(off)".to_owned(), |(_, a)| a.to_string()),
        admin_listen = %admin_listener.as_ref().map_or_else(|| "(off)".to_owned(), |(_, a)| a.to_string()),
        store = %redact(&state.config.store.url),
        preset = state.config.preset.map(|p| p.name()).unwrap_or("(none: policies from the file)"),
        policies = %state.config.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        workers,
        "tollgate is serving"
    );

    let open = state.backend.metrics.connections_gauge();
    // One count per client for both listeners.
    let per_client = (state.config.max_connections_per_client > 0).then(|| {
        Arc::new(PerClient::new(
            state.config.max_connections_per_client,
            state.backend.metrics.connections_refused(),
        ))
    });
    let admin_stop = stopped(stop_rx.clone());
    let admin_router = admin(Arc::clone(&state));
    let admin_loop = async move {
        if let Some((l, _)) = admin_listener {
            serve_admin(l, admin_router, admin_stop).await;
        }
    };
    let http_loop = dispatch(
        listener,
        stopped(stop_rx.clone()),
        Kind::Http,
        senders.clone(),
        Caps {
            slots: Arc::clone(&slots),
            open: open.clone(),
            per_client: per_client.clone(),
        },
    );
    let grpc_loop = async {
        if let Some((l, _)) = grpc_listener {
            let caps = Caps {
                slots,
                open,
                per_client,
            };
            dispatch(l, stopped(stop_rx), Kind::Grpc, senders, caps).await;
            if let Some(health) = health {
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<RateLimitServiceServer<RateLimiter<Guarded>>>()
                    .await;
            }
        }
    };
    tokio::join!(http_loop, grpc_loop, admin_loop);
    // Every sender is gone now: each worker drains its connections and returns.
    for thread in threads {
        let name = thread.thread().name().unwrap_or("a worker").to_owned();
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("{name} failed"),
        }
    }
    tracing::info!("tollgate stopped: every request in flight was answered");
    Ok(())
}

/// Connections the kernel may hold completed but not yet accepted: a burst of new
/// connections beyond it waits for SYN retransmissions (1 s, 3 s, 7 s...). The
/// kernel caps it at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` (`SO_REUSEADDR`, as `TcpListener::bind`) with a backlog of
/// [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A listener on `at` for `what` (named in the error), and the address it got.
fn bind_for(at: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let l = bind(at)
        .map_err(|e| ServeError::Runtime(format!("cannot listen on {at} for {what}: {e}")))?;
    let addr = l.local_addr().map_err(|e| {
        ServeError::Runtime(format!("cannot read the listening address for {what}: {e}"))
    })?;
    Ok((l, addr))
}

/// Completes once the shutdown signal has been seen.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens after it sent.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The Envoy service's rules, loaded and watched, and its metrics registered.
struct EnvoyRules {
    rules: Arc<ArcSwap<RuleSet>>,
    metrics: EnvoyMetrics,
    shadow_mode: bool,
    options: tollgate_envoy::LoadOptions,
}

fn envoy_rules(
    config: &Config,
    envoy: &EnvoyConfig,
    backend: &mut Backend,
) -> Result<EnvoyRules, ServeError> {
    let options = config::envoy_options(config);
    let metrics = EnvoyMetrics::new();
    let (set, seen) = tollgate_envoy::reload::initial(&envoy.config_dir, &options, &metrics)
        .map_err(|e| ServeError::Config(config::envoy_error(e)))?;
    tracing::info!(
        dir = %envoy.config_dir.display(),
        domains = %set.domain_names().join(","),
        rules = set.rules(),
        shadow_mode = envoy.shadow_mode,
        "Envoy rate limit configuration loaded"
    );
    metrics.register(backend.metrics.registry_mut());
    // The store counts decisions by policy part: make the rules' counters now, so a
    // call does not allocate its labels.
    backend.metrics.prepare(set.store_policies());
    let rules = Arc::new(ArcSwap::from_pointee(set));
    // A reload replaces them: the removed rules' counters go with their series.
    let counters = backend.metrics.policy_counters();
    tollgate_envoy::reload::watch(
        envoy.config_dir.clone(),
        options.clone(),
        metrics.clone(),
        &rules,
        seen,
        envoy.reload_interval,
        move |set| counters.replace_envoy(set.store_policies()),
    )
    .map_err(|e| ServeError::Runtime(format!("cannot start the configuration watcher: {e}")))?;
    Ok(EnvoyRules {
        rules,
        metrics,
        shadow_mode: envoy.shadow_mode,
        options,
    })
}

/// The services of the gRPC listener: `envoy.service.ratelimit.v3.RateLimitService`
/// and the standard gRPC health service (reporting serving), and the health
/// service's reporter, which says not serving once the listener stops.
///
/// The rate limit service decides with the backend through [`Guarded`], so a store
/// failure follows `on_error` as on the HTTP APIs.
///
/// They are tonic's generated services, served over HTTP/2 by hyper directly with a
/// two-way path match ([`GrpcRoutes`]), not by tonic's `Server`, whose router and
/// per-request layers (an axum `Router`, connect-info, tracing) this listener does
/// not need; and so its connections are handed to the workers and shut down as the
/// HTTP listener's are.
async fn grpc_routes(
    state: &Arc<AppState>,
    envoy: EnvoyRules,
) -> (
    GrpcRoutes<impl GrpcService + Clone + use<>>,
    tonic_health::server::HealthReporter,
) {
    // The store with on_error applied, drawing on the local limiter the HTTP APIs use.
    let store = Guarded::new(
        Arc::clone(&state.backend),
        Arc::clone(&state.local),
        state.config.store.on_error,
        state.config.store.nodes,
    );
    let limiter = RateLimiter::new(Arc::new(store), envoy.rules, envoy.metrics)
        .shadow_mode(envoy.shadow_mode)
        .options(envoy.options);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RateLimiter<Guarded>>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    (GrpcRoutes::new(limiter, health_service), health)
}

/// How long a client has to send a request's headers, counted from when the server
/// starts waiting for them (a new connection, or an idle keep-alive one); then the
/// connection is closed. Without it a client sending its headers a byte at a time
/// (slowloris), or opening connections and sending nothing, holds them forever:
/// hyper's own 30 s default needs a timer, which `axum::serve` does not give it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a gRPC (HTTP/2) connection may be silent before the server sends a PING,
/// and then how long the PING has to be answered before the connection is closed.
/// A proxy's rate limit connections live for hours; without this, one whose peer
/// vanished without a FIN (a crashed host, a dropped NAT entry) stays open forever
/// and holds a `max_connections` place. Every HTTP/2 client answers PINGs itself.
pub const GRPC_KEEPALIVE: Duration = Duration::from_secs(10);

/// The pause after a failed `accept` (out of file descriptors, say) before the next
/// one, so the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// HTTP/1: the decision API and the protected API.
    Http,
    /// HTTP/2: the Envoy rate limit service.
    Grpc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "",
            Kind::Grpc => "gRPC ",
        }
    }
}

/// An accepted connection on its way to a worker. It travels as a std stream: a
/// tokio stream belongs to the I/O driver of the runtime that registered it.
struct Conn {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    kind: Kind,
    slot: Slot,
}

/// A connection's place under `max_connections` (and under its client's
/// `max_connections_per_client`), held until the connection ends.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _client: Option<ClientPlace>,
    open: prometheus_client::metrics::gauge::Gauge,
}

/// What a listener's connections count against, shared by both listeners.
struct Caps {
    /// `max_connections`.
    slots: Arc<tokio::sync::Semaphore>,
    /// The connections open, for `/metrics`.
    open: prometheus_client::metrics::gauge::Gauge,
    /// `max_connections_per_client`, when set.
    per_client: Option<Arc<PerClient>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Accepts `listener`'s connections until `shutdown` completes and hands them to
/// `workers` in turn (a worker that is gone is skipped). Each connection takes one
/// of `slots` (`max_connections`, shared with the other listener) until it ends:
/// while none is free, no connection is accepted (the kernel's listen queue holds
/// them). A connection whose client has `max_connections_per_client` open already
/// is closed at once. `open` counts the connections open, for `/metrics`.
async fn dispatch(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    kind: Kind,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Conn>>,
    Caps {
        slots,
        open,
        per_client,
    }: Caps,
) {
    let mut shutdown = pin!(shutdown);
    let mut next = 0usize;
    let mut full = false;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => {
                full = false;
                p
            }
            Err(_) => {
                if !full {
                    full = true;
                    tracing::warn!(
                        "every max_connections place is taken: new {}connections wait until one closes",
                        kind.name()
                    );
                }
                tokio::select! {
                    p = Arc::clone(&slots).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    () = shutdown.as_mut() => return,
                }
            }
        };
        let Some((stream, peer)) = accept(&listener, shutdown.as_mut(), kind.name()).await else {
            return;
        };
        let client = match &per_client {
            Some(clients) => match clients.admit(peer.ip()) {
                Some(place) => Some(place),
                // Closed (dropped) at once; its max_connections place is free again.
                None => continue,
            },
            None => None,
        };
        open.inc();
        let slot = Slot {
            _permit: permit,
            _client: client,
            open: open.clone(),
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot hand a {}connection to a worker: {e}", kind.name());
                continue;
            }
        };
        let mut conn = Conn {
            stream,
            peer,
            kind,
            slot,
        };
        for _ in 0..workers.len() {
            let to = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            match to.send(conn) {
                Ok(()) => break,
                Err(tokio::sync::mpsc::error::SendError(back)) => conn = back,
            }
        }
    }
}

/// A worker: serves the connections it is handed on this thread's runtime until
/// the listeners stop (its channel closes), then lets each connection finish its
/// request in flight and waits for all of them. Each HTTP request carries
/// `ConnectInfo<SocketAddr>`, the peer address the key extractors read.
async fn worker<H: GrpcService + Clone>(
    mut connections: tokio::sync::mpsc::UnboundedReceiver<Conn>,
    state: Arc<AppState>,
    router: Router,
    grpc: Option<GrpcRoutes<H>>,
) {
    // This worker's own connection to the store, made now (in the background: the
    // worker serves meanwhile, and a call made before it is up waits for it).
    let warming = Arc::clone(&state);
    tokio::spawn(async move {
        if let Err(e) = warming.backend.warm_up().await {
            tracing::debug!(error = %e, "a worker could not connect to the store yet");
        }
    });
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // gRPC needs no Date header; larger windows mean fewer WINDOW_UPDATE frames.
        .auto_date_header(false)
        .keep_alive_interval(Some(GRPC_KEEPALIVE))
        .keep_alive_timeout(GRPC_KEEPALIVE)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    while let Some(Conn {
        stream,
        peer,
        kind,
        slot,
    }) = connections.recv().await
    {
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot serve a {}connection: {e}", kind.name());
                continue;
            }
        };
        match (kind, &grpc) {
            (Kind::Http, _) => {
                let tower = TowerToHyperService::new(router.clone());
                let state = Arc::clone(&state);
                // POST /v1/check and /v1/peek are served directly; every other
                // request goes through the router.
                let service =
                    hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                        let state = Arc::clone(&state);
                        let tower = tower.clone();
                        async move {
                            match api::direct_route(&request) {
                                Some(consume) => Ok(api::direct(state, request, consume).await),
                                None => {
                                    request.extensions_mut().insert(ConnectInfo(peer));
                                    hyper::service::Service::call(&tower, request).await
                                }
                            }
                        }
                    });
                let connection =
                    graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            (Kind::Grpc, Some(routes)) => {
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(routes.clone());
                let connection =
                    graceful.watch(http2.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, "gRPC connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            // Only a gRPC listener makes gRPC connections, and it exists only with
            // the routes.
            (Kind::Grpc, None) => {}
        }
    }
    graceful.shutdown().await;
}

/// Connections the admin listener serves at once; more wait in its listen queue.
/// Probes and scrapers need a few; the bound keeps a flood of them from growing
/// without end.
pub const ADMIN_CONNECTIONS: usize = 64;

/// Serves `server.admin_listen` (health and metrics) on this runtime, the one that
/// accepts connections for the workers: outside `max_connections`, and not behind
/// the workers' queues, so a probe is answered while the main listener is full or
/// its workers are busy. At most [`ADMIN_CONNECTIONS`] at once. On shutdown it
/// stops accepting and lets each connection finish its request in flight.
async fn serve_admin(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    let mut shutdown = pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.as_mut() => break,
        };
        let Some((stream, peer)) = accept(&listener, shutdown.as_mut(), "admin ").await else {
            break;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "admin connection ended: {e}");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// The next connection of `listener`, or `None` once `shutdown` completes. A failed
/// `accept` (out of file descriptors, say) is logged and retried after
/// `ACCEPT_BACKOFF`.
async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    kind: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!("cannot accept a {kind}connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal: finishing the requests in flight");
}
